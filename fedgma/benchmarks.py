"""Server-side cost of FedGMA against Flower's FedAvg (``fedgma bench``).

Measured in one process, side by side, on identical replies:

- ``aggregate_train`` wall time of FedGMA (ws and gma) and of Flower's FedAvg for
  K clients and P float32 parameters, and the ratio FedGMA / FedAvg;
- throughput: the reply bytes an aggregation must read (K * P * 4) per second,
  as a share of a plain NumPy copy's read bandwidth on the same machine;
- peak extra memory of one aggregation (tracemalloc), as a function of K;
- payload bytes a client receives per round (ratio FedGMA / FedAvg);
- seconds per round of FedGMA and FedAvg in the same simulation settings (not with ``--quick``).

Writes the tables to ``docs/benchmarks.md`` (between markers) and prints them.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from .strategy import FedGMA

SHARES = (0.5, 0.3, 0.15, 0.05)  # a model of four arrays
DISTINCT_REPLIES = 10  # replies cycle through this many distinct weight sets (all larger than the caches)
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


class _Grid:
    def __init__(self, nodes: int) -> None:
        self.nodes = list(range(1, nodes + 1))

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _identity() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0


def model(parameters: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    sizes = [int(parameters * s) for s in SHARES]
    sizes[0] += parameters - sum(sizes)
    return {f"layer{i}.weight": rng.standard_normal(n, dtype=np.float32) for i, n in enumerate(sizes)}


def replies(x: dict[str, np.ndarray], clients: int, rng: np.random.Generator) -> list[Message]:
    from flwr.app import Metadata, MessageType

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
        out.append(Message(content=content, metadata=metadata))
    return out


def _strategies() -> dict[str, Callable[[], FedAvg]]:
    common = {"min_train_nodes": 1, "min_available_nodes": 1}
    return {
        "FedAvg (Flower)": lambda: FedAvg(**common),
        "FedGMA ws": lambda: FedGMA(variant="ws", **common),
        "FedGMA gma": lambda: FedGMA(variant="gma", **common),
    }


def _aggregate(make: Callable[[], FedAvg], x: dict[str, np.ndarray], msgs: list[Message]) -> float:
    strategy = make()
    list(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in x.items()}), ConfigRecord(),
                                  _Grid(len(msgs))))
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


def time_table(sizes: list[int], clients: list[int], repeats: int) -> tuple[list[str], list[dict]]:
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
            results.append({"P": parameters, "K": k, **best, "bytes": read})
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


def memory_table(parameters: int, clients: list[int]) -> list[str]:
    rng = np.random.default_rng(1)
    x = model(parameters, rng)
    model_bytes = parameters * 4
    lines = ["| K | " + " | ".join(f"{name} peak extra (x model)" for name in _strategies()) + " |",
             "|---|" + "---|" * len(_strategies())]
    for k in clients:
        msgs = replies(x, k, rng)
        cells = []
        for make in _strategies().values():
            strategy = make()
            list(strategy.configure_train(1, ArrayRecord({n: Array(v) for n, v in x.items()}), ConfigRecord(),
                                          _Grid(k)))
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            strategy.aggregate_train(1, msgs)
            peak = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
            cells.append(f"{peak / model_bytes:.2f}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def payload_bytes(parameters: int) -> list[str]:
    """What a client receives per round: the ArrayRecord plus the ConfigRecord."""
    rng = np.random.default_rng(2)
    x = ArrayRecord({k: Array(v) for k, v in model(parameters, rng).items()})
    sizes = {}
    for name, make in _strategies().items():
        messages = list(make().configure_train(1, x, ConfigRecord(), _Grid(4)))
        per_client = []
        for message in messages:
            total = 0
            for record in message.content.array_records.values():
                total += sum(len(a.data) for a in record.values())
            for record in message.content.config_records.values():
                total += sum(len(str(k)) + len(str(v)) for k, v in record.items())
            per_client.append(total)
        sizes[name] = statistics.fmean(per_client)
    base = sizes["FedAvg (Flower)"]
    return [f"| {name} | {size:,.0f} | {size / base:.2f} |" for name, size in sizes.items()]


def round_times(rounds: int = 8, repeats: int = 2) -> list[str]:
    """Seconds per round of FedGMA (ws) and FedAvg in the same simulation settings, alternating runs."""
    import csv
    import tempfile

    from .launch import SimulationRuntime

    app_dir = Path(__file__).resolve().parent.parent
    settings = {"num-server-rounds": rounds, "min-nodes": 10, "train-images": 5000, "test-images": 2000,
                "partitioning": "iid", "download": False}
    federation = "num-supernodes=10 client-resources-num-cpus=1"
    seconds: dict[str, list[float]] = {"FedAvg (Flower)": [], "FedGMA ws": []}
    strategies = {"FedAvg (Flower)": {"strategy": "fedavg"}, "FedGMA ws": {"strategy": "fedgma", "variant": "ws"}}
    with tempfile.TemporaryDirectory() as tmp, SimulationRuntime(Path(tmp) / "runtime") as runtime:
        for repeat in range(repeats):
            for name, strategy in strategies.items():
                run_name = f"{strategy['strategy']}-{repeat}"
                config = {**settings, **strategy, "output-dir": tmp, "run-name": run_name}
                outcome = runtime.cli.wait(runtime.cli.submit(app_dir, config, federation), timeout=1800)
                if not outcome.completed:
                    raise RuntimeError(f"benchmark run {run_name} ended {outcome.status}")
                with (Path(tmp) / run_name / "metrics.csv").open() as handle:
                    rows = [r for r in csv.DictReader(handle) if int(r["round"]) >= 2]  # round 1 starts workers
                seconds[name] += [float(r["round-seconds"]) for r in rows]
    base = statistics.fmean(seconds["FedAvg (Flower)"])
    return [f"| {name} | {len(values)} | {statistics.fmean(values):.3f} | {statistics.median(values):.3f} "
            f"| {statistics.fmean(values) / base:.3f} |" for name, values in seconds.items()]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB; Python {platform.python_version()}, "
            f"NumPy {np.__version__}")


def main(output: Path | None, quick: bool = False) -> int:
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower logs every sampling and aggregation
    _identity()
    sizes = [1_000_000] if quick else [1_000_000, 10_000_000]
    clients = [10, 50] if quick else [10, 50, 100]
    started = time.perf_counter()
    lines = [f"Machine: {machine()}.", ""]
    print(lines[0], flush=True)
    table, _ = time_table(sizes, clients, repeats=5)
    lines += ["**aggregate_train time** (median of 5, interleaved; identical replies for every strategy):", "",
              *table, ""]
    print("\n".join(table), flush=True)
    memory = memory_table(1_000_000, clients)
    lines += ["**Peak extra memory of one aggregate_train** (tracemalloc, P = 1M float32; the replies "
              "themselves are not counted: Flower holds them before the strategy runs):", "", *memory, ""]
    print("\n".join(memory), flush=True)
    payload = payload_bytes(1_000_000)
    lines += ["**Bytes a client receives per round** (P = 1M; arrays plus config):", "",
              "| strategy | bytes | ratio to FedAvg |", "|---|---|---|", *payload, ""]
    print("\n".join(payload), flush=True)
    if not quick:
        rounds = round_times()
        lines += ["**Seconds per round in simulation** (10 clients x 500 images x 3 local epochs, IID binary task, "
                  "central evaluation on 2 x 2,000 images; runs alternate FedAvg, FedGMA, FedAvg, FedGMA; rounds 2+):",
                  "", "| strategy | rounds | mean s | median s | mean / FedAvg |", "|---|---|---|---|---|", *rounds, ""]
        print("\n".join(rounds), flush=True)
    lines.append(f"Command: `fedgma bench{' --quick' if quick else ''}`; {time.perf_counter() - started:.0f} s.")
    if output is not None:
        block = "\n".join(lines) + "\n"
        text = output.read_text() if output.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(f"{head}{BEGIN}\n{block}{END}{tail}")
        print(f"written to {output}")
    return 0
