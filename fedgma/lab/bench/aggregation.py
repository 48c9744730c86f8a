"""Aggregation, memory and payload of FedGMA against Flower's FedAvg, in one process, on identical
replies (``fedgma bench --parts aggregation,memory,payload``)."""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedgma.strategy import FedGMA

SHARES = (0.5, 0.3, 0.15, 0.05)  # a model of four arrays
DISTINCT_REPLIES = 10  # replies cycle through this many distinct weight sets (all larger than the caches)


class _Grid:
    def __init__(self, nodes: int) -> None:
        self.nodes = list(range(1, nodes + 1))

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _grid(nodes: int) -> Grid:
    """A stand-in for Flower's ``Grid``: the strategies ask it for node ids only."""
    return cast(Grid, _Grid(nodes))


def _identity() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0


def model(parameters: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    sizes = [int(parameters * s) for s in SHARES]
    sizes[0] += parameters - sum(sizes)
    return {f"layer{i}.weight": rng.standard_normal(n, dtype=np.float32) for i, n in enumerate(sizes)}


def replies(x: dict[str, np.ndarray], clients: int, rng: np.random.Generator) -> list[Message]:
    from flwr.app import MessageType, Metadata

    distinct = [
        ArrayRecord({k: Array(v - np.float32(0.01) * rng.standard_normal(v.size, dtype=np.float32))
                     for k, v in x.items()})
        for _ in range(min(clients, DISTINCT_REPLIES))
    ]
    out = []
    for k in range(clients):
        record = ArrayRecord({name: array for name, array in distinct[k % len(distinct)].items()})
        content = RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": 100 + k})})
        metadata = Metadata(run_id=1, message_id=f"m{k}", src_node_id=k + 1, dst_node_id=0,
                            reply_to_message_id="i", group_id="1", created_at=0.0, ttl=3600.0,
                            message_type=MessageType.TRAIN)
        # A reply as the SuperLink hands it over (Flower's own constructor, which its typing leaves out).
        out.append(Message(content=content, metadata=metadata))  # type: ignore[call-overload]
    return out


def _strategies() -> dict[str, Callable[[], FedAvg]]:
    return {
        "FedAvg (Flower)": lambda: FedAvg(min_train_nodes=1, min_available_nodes=1),
        "FedGMA ws": lambda: FedGMA(variant="ws", min_train_nodes=1, min_available_nodes=1),
        "FedGMA gma": lambda: FedGMA(variant="gma", min_train_nodes=1, min_available_nodes=1),
    }


def _aggregate(make: Callable[[], FedAvg], x: dict[str, np.ndarray], msgs: list[Message]) -> float:
    strategy = make()
    list(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in x.items()}), ConfigRecord(),
                                  _grid(len(msgs))))
    gc.collect()
    start = time.perf_counter()
    arrays, _ = strategy.aggregate_train(1, msgs)
    elapsed = time.perf_counter() - start
    assert arrays is not None
    return elapsed


def copy_bandwidth(nbytes: int = 400 * 2**20, repeats: int = 5) -> float:
    """Bytes read per second by ``np.copyto`` of a large float32 buffer (the bound we compare to)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return nbytes / min(times)


def time_table(sizes: list[int], clients: list[int], repeats: int) -> tuple[list[str], list[dict[str, float]]]:
    rng = np.random.default_rng(0)
    bandwidth = copy_bandwidth()
    results = []
    for parameters in sizes:
        x = model(parameters, rng)
        for k in clients:
            msgs = replies(x, k, rng)
            times: dict[str, list[float]] = {name: [] for name in _strategies()}
            for _ in range(repeats):  # interleaved, so drift hits every strategy alike
                for name, make in _strategies().items():
                    times[name].append(_aggregate(make, x, msgs))
            # Median, not best: Flower's FedAvg allocates per reply, and its time depends on
            # how the allocator's state happens to be (fresh pages or recycled ones).
            best = {name: statistics.median(t) for name, t in times.items()}
            read = k * parameters * 4
            results.append({"P": parameters, "K": k, **best, "bytes": read, "bandwidth": bandwidth})
            del msgs
            gc.collect()
    lines = [
        f"NumPy copy bound on this machine: {bandwidth / 1e9:.2f} GB/s read.",
        "",
        "| P (float32) | K | FedAvg s | FedGMA ws s | FedGMA gma s | ws / FedAvg | gma / FedAvg "
        "| FedAvg % of copy | ws % of copy | gma % of copy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        avg, ws, gma = r["FedAvg (Flower)"], r["FedGMA ws"], r["FedGMA gma"]
        share = [100 * r["bytes"] / t / bandwidth for t in (avg, ws, gma)]
        lines.append(
            f"| {r['P'] / 1e6:g}M | {r['K']} | {avg:.3f} | {ws:.3f} | {gma:.3f} | {ws / avg:.2f} | {gma / avg:.2f} "
            f"| {share[0]:.0f} % | {share[1]:.0f} % | {share[2]:.0f} % |"
        )
    return lines, results


def memory_table(parameters: int, clients: list[int]) -> tuple[list[str], dict[str, list[float]]]:
    """Peak extra memory of one aggregation per K, as multiples of the model (and per strategy)."""
    rng = np.random.default_rng(1)
    x = model(parameters, rng)
    model_bytes = parameters * 4
    lines = ["| K | " + " | ".join(f"{name} peak extra (x model)" for name in _strategies()) + " |",
             "|---|" + "---|" * len(_strategies())]
    peaks: dict[str, list[float]] = {name: [] for name in _strategies()}
    for k in clients:
        msgs = replies(x, k, rng)
        cells = []
        for name, make in _strategies().items():
            strategy = make()
            list(strategy.configure_train(1, ArrayRecord({n: Array(v) for n, v in x.items()}), ConfigRecord(),
                                          _grid(k)))
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            strategy.aggregate_train(1, msgs)
            peak = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
            peaks[name].append(peak / model_bytes)
            cells.append(f"{peak / model_bytes:.2f}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines, peaks


def payload_bytes(parameters: int) -> tuple[list[str], dict[str, float]]:
    """What a client receives per round: the ArrayRecord plus the ConfigRecord (and the ratios)."""
    rng = np.random.default_rng(2)
    x = ArrayRecord({k: Array(v) for k, v in model(parameters, rng).items()})
    sizes = {}
    for name, make in _strategies().items():
        messages = list(make().configure_train(1, x, ConfigRecord(), _grid(4)))
        per_client = []
        for message in messages:
            total = 0
            for record in message.content.array_records.values():
                total += sum(len(a.data) for a in record.values())
            for config in message.content.config_records.values():
                total += sum(len(str(k)) + len(str(v)) for k, v in config.items())
            per_client.append(total)
        sizes[name] = statistics.fmean(per_client)
    base = sizes["FedAvg (Flower)"]
    ratios = {name: size / base for name, size in sizes.items()}
    return [f"| {name} | {size:,.0f} | {ratios[name]:.2f} |" for name, size in sizes.items()], ratios


def ratio_interval(values: list[float], base: list[float], draws: int = 2000) -> tuple[float, float]:
    """95 % bootstrap interval of ``mean(values) / mean(base)`` (seeded, so reproducible)."""
    rng = np.random.default_rng(0)
    v, b = np.asarray(values), np.asarray(base)
    ratios = np.sort([rng.choice(v, v.size).mean() / rng.choice(b, b.size).mean() for _ in range(draws)])
    return float(ratios[int(0.025 * draws)]), float(ratios[int(0.975 * draws) - 1])


