"""Server-side cost of FedGMA against Flower's FedAvg (``fedgma bench``).

Measured in one process, side by side, on identical replies:

- ``aggregate_train`` wall time of FedGMA (ws and gma) and of Flower's FedAvg for
  K clients and P float32 parameters, and the ratio FedGMA / FedAvg;
- throughput: the reply bytes an aggregation must read (K * P * 4) per second,
  as a share of a plain NumPy copy's read bandwidth on the same machine;
- peak extra memory of one aggregation (tracemalloc), as a function of K;
- payload bytes a client receives per round (ratio FedGMA / FedAvg);
- seconds per round of FedGMA and FedAvg in the same simulation settings (not with ``--quick``);
- what our client app imports beyond flwr and torch, now and before (``imports``);
- where a round's time goes, deployed and simulated, before and after the round loop polled
  for replies itself (``deployment``, :mod:`fedgma.lab.round_latency`).

Writes the tables to ``docs/benchmarks.md`` (between markers) and prints them.
"""

from __future__ import annotations

import functools
import gc
import os
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedgma.loop.run_folder import RunFolder
from fedgma.strategy import FedGMA

from . import round_latency
from .project import app_defaults, app_dir

SHARES = (0.5, 0.3, 0.15, 0.05)  # a model of four arrays
DISTINCT_REPLIES = 10  # replies cycle through this many distinct weight sets (all larger than the caches)


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
                                          _Grid(k)))
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
    ratios = {name: size / base for name, size in sizes.items()}
    return [f"| {name} | {size:,.0f} | {ratios[name]:.2f} |" for name, size in sizes.items()], ratios


def ratio_interval(values: list[float], base: list[float], draws: int = 2000) -> tuple[float, float]:
    """95 % bootstrap interval of ``mean(values) / mean(base)`` (seeded, so reproducible)."""
    rng = np.random.default_rng(0)
    v, b = np.asarray(values), np.asarray(base)
    ratios = np.sort([rng.choice(v, v.size).mean() / rng.choice(b, b.size).mean() for _ in range(draws)])
    return float(ratios[int(0.025 * draws)]), float(ratios[int(0.975 * draws) - 1])


class TreeMemory:
    """Peak proportional set size (PSS) of a process and all its descendants, sampled.

    PSS splits shared pages between the processes that map them, so the sum over
    a tree is the memory the tree uses (RSS would count torch's libraries once per
    process). Linux only; a sample every ``interval`` seconds on a thread.
    """

    def __init__(self, root: int, interval: float = 0.5) -> None:
        import threading

        self.root = root
        self.interval = interval
        self.peak_bytes = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def pss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return 0

    def sample(self) -> int:
        from .launch import descendants

        pids = [self.root, *descendants(self.root)]
        total = sum(self.pss(pid) for pid in pids)
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, len(pids)
        return total

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeMemory:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def round_times(rounds: int = 16, repeats: int = 3) -> tuple[list[str], tuple[float, float, float]]:
    """Seconds per round of FedGMA (ws) and FedAvg in the same simulation settings, alternating runs."""
    import tempfile

    from .launch import HostSettings, SimulationRuntime

    settings = {"num-server-rounds": rounds, "min-nodes": 10, "train-images": 5000, "test-images": 2000,
                "partitioning": "iid"}
    federation = "num-supernodes=10 client-resources-num-cpus=1"
    seconds: dict[str, list[float]] = {"FedAvg (Flower)": [], "FedGMA ws": []}
    strategies = {"FedAvg (Flower)": {"strategy": "fedavg"}, "FedGMA ws": {"strategy": "fedgma", "variant": "ws"}}
    with tempfile.TemporaryDirectory() as tmp, SimulationRuntime(
        Path(tmp) / "runtime", HostSettings(output_root=Path(tmp), download=False)
    ) as runtime:
        for repeat in range(repeats):
            for name, strategy in strategies.items():
                run_name = f"{strategy['strategy']}-{repeat}"
                config = {**settings, **strategy, "run-name": run_name}
                outcome = runtime.cli.wait(runtime.cli.submit(app_dir(), config, federation), timeout=1800)
                if not outcome.completed:
                    raise RuntimeError(f"benchmark run {run_name} ended {outcome.status}")
                rows = round_latency.metrics_rows(RunFolder(Path(tmp) / run_name).metrics, 2)  # round 1 starts workers
                seconds[name] += [float(r["round-seconds"]) for r in rows]
    base = seconds["FedAvg (Flower)"]
    lines = []
    for name, values in seconds.items():
        low, high = ratio_interval(values, base)
        ratio = statistics.fmean(values) / statistics.fmean(base)
        lines.append(f"| {name} | {len(values)} | {statistics.fmean(values):.3f} | {statistics.median(values):.3f} "
                     f"| {ratio:.3f} | {low:.3f} - {high:.3f} |")
    return lines, (ratio, low, high)  # the last row's: FedGMA's


def simulation_scale(clients: int = 1000, sampled: int = 100, rounds: int = 3) -> list[str]:
    """FedGMA ws in simulation with many virtual clients: seconds per round and peak memory."""
    import tempfile

    from .launch import HostSettings, SimulationRuntime

    config = {"num-server-rounds": rounds, "strategy": "fedgma", "variant": "ws", "min-nodes": sampled,
              "fraction-train": sampled / clients, "train-images": 0, "test-images": 2000,
              "partitioning": "iid", "run-name": "scale"}
    federation = f"num-supernodes={clients} client-resources-num-cpus=1"
    with tempfile.TemporaryDirectory() as tmp, SimulationRuntime(
        Path(tmp) / "runtime", HostSettings(output_root=Path(tmp), download=False)
    ) as runtime:
        assert runtime.process is not None
        with TreeMemory(runtime.process.pid) as memory:
            run_id = runtime.cli.submit(app_dir(), config, federation)
            outcome = runtime.cli.wait(run_id, timeout=3600)
        if not outcome.completed:
            raise RuntimeError(f"scale run ended {outcome.status}: {outcome.details}")
        rows = round_latency.metrics_rows(RunFolder(Path(tmp) / "scale").metrics, 1)
    lines = [f"| {r['round']} | {r['replies-used']} | {float(r['round-seconds']):.1f} "
             f"| {float(r['train-wait-seconds']):.1f} | {float(r['aggregate-seconds']):.3f} "
             f"| {float(r['central-eval-seconds']):.2f} | {float(r['setup-seconds']):.3f} "
             f"| {float(r['train-seconds']):.3f} |" for r in rows]
    lines += ["", f"Peak memory of the whole simulation (SuperLink, ServerApp, Ray and its workers; PSS summed "
              f"over {memory.peak_processes} processes): {memory.peak_bytes / 2**30:.2f} GiB."]
    return lines


def send_raw(address: str, nbytes: int, timeout: float = 60.0) -> str:
    """Send one unauthenticated gRPC message of ``nbytes`` to the Fleet API; the status code's name.

    Parameters
    ----------
    address : str
        The Fleet API's ``host:port`` (loopback only).
    nbytes : int
        The message's size in bytes (zeros; calls of one size share one buffer).
    timeout : float
        Seconds before the call gives up (``DEADLINE_EXCEEDED``).
    """
    import grpc

    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)]) as channel:
        call = channel.unary_unary("/flwr.proto.Fleet/CreateNode",
                                   request_serializer=lambda data: data, response_deserializer=lambda data: data)
        try:
            call(_zeros(nbytes), timeout=timeout)
        except grpc.RpcError as err:
            return err.code().name
    return "OK"


@functools.lru_cache(maxsize=2)
def _zeros(nbytes: int) -> bytes:
    return bytes(nbytes)


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    except OSError:  # gone
        pass
    return 0


def largest_honest_message(chunk_bytes: int | None = None) -> int:
    """Bytes of the largest Fleet message an honest SuperNode sends or receives for a model's arrays.

    Flower cuts each array into ``ArrayChunk`` objects of at most ``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``
    (5 MiB) and moves one object per ``PushObject`` / ``PullObject`` call. This serializes a record
    with an array of three chunks and returns the largest of those calls' messages, with the largest
    node and run ids protobuf can carry.

    Parameters
    ----------
    chunk_bytes : int, optional
        The chunk size (default: flwr's ``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``).
    """
    from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
    from flwr.proto.message_pb2 import PullObjectResponse, PushObjectRequest
    from flwr.proto.node_pb2 import Node
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    chunk = chunk_bytes or FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
    record = ArrayRecord({"w": Array(np.ones(3 * chunk // 4 + 1, dtype=np.float32))})  # 3 chunks, the last short
    largest = 0
    for object_id, obj in get_all_nested_objects(record).items():
        content = obj.deflate()
        push = PushObjectRequest(node=Node(node_id=2**64 - 1), run_id=2**64 - 1, object_id=object_id,
                                 object_content=content)
        pull = PullObjectResponse(object_found=True, object_available=True, object_content=content)
        largest = max(largest, push.ByteSize(), pull.ByteSize())
    return largest


def _superlink(launcher: str, home: Path, env: dict[str, str]) -> tuple[object, int]:
    """Start an insecure ``launcher`` on loopback; (its process, its Fleet port) once it answers."""
    from .launch import BIN, flower_env, free_port, start, wait_for_http

    fleet, http = free_port(), free_port()
    process = start([str(BIN / launcher), "--insecure", "--host", "127.0.0.1", "--port", str(http),
                     "--fleet-api-address", f"127.0.0.1:{fleet}", "--disable-runtime-dependency-installation"],
                    {**flower_env(home), **env}, home.with_suffix(".log"))
    try:
        wait_for_http(f"http://127.0.0.1:{http}/health", 60, process)  # Fleet starts before HTTP
    except BaseException:
        from .launch import stop

        stop(process)
        raise
    return process, fleet


def fleet_messages(sizes_mb: tuple[int, ...] = (10, 100, 300)) -> list[str]:
    """One unauthenticated message of each size to the Fleet API of flower-superlink and of
    fedgma-superlink: the answer, the SuperLink's peak extra memory, and what it keeps."""
    import tempfile
    import threading

    from .launch import stop

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for launcher in ("flower-superlink", "fedgma-superlink"):
            process, fleet = _superlink(launcher, Path(tmp) / launcher, {})
            try:
                time.sleep(2.0)  # the SuperExec it starts settles
                for size in sizes_mb:
                    base = peak = _rss(process.pid)
                    done = threading.Event()

                    def sample() -> None:
                        nonlocal peak
                        while not done.is_set():
                            peak = max(peak, _rss(process.pid))
                            time.sleep(0.01)

                    sampler = threading.Thread(target=sample)
                    sampler.start()
                    answer = send_raw(f"127.0.0.1:{fleet}", size << 20)
                    time.sleep(1.0)
                    done.set()
                    sampler.join()
                    kept = _rss(process.pid) - base
                    lines.append(f"| `{launcher}` | {size} MB | {answer} | {(peak - base) / 2**20:.0f} MiB "
                                 f"| {kept / 2**20:.0f} MiB |")
            finally:
                stop(process)
    return lines


@dataclass(frozen=True)
class Flood:
    """What a flood of concurrent unauthenticated Fleet messages did to a SuperLink."""

    answers: dict[str, int]  # status code name -> calls
    base_bytes: int  # resident set of the SuperLink's process tree before the flood
    peak_bytes: int  # its peak during the flood
    seconds: float  # from the first call to the last answer


def flood(address: str, pids: list[int], count: int, nbytes: int, timeout: float = 30.0) -> Flood:
    """Send ``count`` unauthenticated messages of ``nbytes`` at once to the Fleet API at ``address``
    (each on its own connection, opened first, then all released together; each call at most
    ``timeout`` s), sampling the summed resident set (VmRSS) of ``pids`` every 10 ms."""
    import collections
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    base = peak = sum(_rss(pid) for pid in pids)
    done, ready = threading.Event(), threading.Barrier(count)

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, sum(_rss(pid) for pid in pids))

    def send(_: int) -> str:
        with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)]) as channel:
            grpc.channel_ready_future(channel).result(timeout=timeout)
            call = channel.unary_unary("/flwr.proto.Fleet/CreateNode", request_serializer=lambda data: data,
                                       response_deserializer=lambda data: data)
            ready.wait(timeout)
            try:
                call(_zeros(nbytes), timeout=timeout)
            except grpc.RpcError as err:
                return err.code().name
        return "OK"

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            answers = collections.Counter(pool.map(send, range(count)))
        seconds = time.perf_counter() - started
        time.sleep(0.5)  # what the SuperLink still does after answering
    finally:
        done.set()
        sampler.join()
    return Flood(dict(answers), base, peak, seconds)


FLOOD_SETUPS: tuple[tuple[str, dict[str, str], int], ...] = (  # launcher, its environment, messages
    ("flower-superlink", {}, 100),
    ("fedgma-superlink", {"FEDGMA_FLEET_MAX_MESSAGE_MB": "32", "FEDGMA_FLEET_MAX_CONCURRENT_CALLS": "1000"}, 60),
    ("fedgma-superlink", {"FEDGMA_FLEET_MAX_CONCURRENT_CALLS": "1000"}, 100),
    ("fedgma-superlink", {}, 100),
    ("fedgma-superlink", {"FEDGMA_FLEET_MAX_CONCURRENT_CALLS": "16"}, 100),
)


def fleet_flood(setups: tuple[tuple[str, dict[str, str], int], ...] = FLOOD_SETUPS) -> list[str]:
    """Floods of concurrent unauthenticated messages, each 64 KiB under the SuperLink's message bound
    (for plain flower-superlink: under fedgma-superlink's default), one SuperLink per setup (launcher,
    environment, number of messages): the answers and the SuperLink tree's peak extra resident memory.
    """
    import tempfile

    from .launch import descendants, stop
    from .superlink import call_limit, message_limit

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (launcher, env, count) in enumerate(setups):
            bounded = launcher == "fedgma-superlink"
            limit = message_limit(env if bounded else {})
            nbytes = limit - (64 << 10)
            process, fleet = _superlink(launcher, Path(tmp) / f"superlink-{index}", env)
            try:
                time.sleep(2.0)  # the SuperExec it starts settles
                result = flood(f"127.0.0.1:{fleet}", [process.pid, *descendants(process.pid)], count, nbytes)
            finally:
                stop(process)
            bounds = f"{limit >> 20} MiB, {call_limit(env)} calls" if bounded else "2 GiB, 1000 calls (Flower's)"
            answers = ", ".join(f"{code} {n}" for code, n in sorted(result.answers.items()))
            lines.append(f"| `{launcher}` | {bounds} | {count} x {nbytes / 2**20:.2f} MiB | {answers} "
                         f"| {result.seconds:.1f} s | {result.base_bytes / 2**20:.0f} MiB "
                         f"| {(result.peak_bytes - result.base_bytes) / 2**20:.0f} MiB |")
            print(lines[-1], flush=True)
    return lines


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


def target_lines(times: list[dict], peaks: dict[str, list[float]], payload: dict[str, float],
                 rounds: tuple[float, float, float]) -> list[str]:
    """Issue 6's targets against this run's figures, one row each."""
    gma_names = ("FedGMA ws", "FedGMA gma")
    ratios = [(r[n] / r["FedAvg (Flower)"], n, r) for r in times for n in gma_names]
    worst, worst_name, worst_row = max(ratios, key=lambda item: item[0])
    shares = [100 * r["bytes"] / r[n] / r["bandwidth"] for r in times for n in gma_names]
    flat = {n: max(v) / min(v) for n, v in peaks.items() if n in gma_names}
    payload_ratio = max(abs(payload[n] - 1.0) for n in gma_names) + 1.0
    ratio, low, high = rounds

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    return [
        "| target | measured | |",
        "|---|---|---|",
        f"| aggregate_train FedGMA / FedAvg <= 1.3 at every K and P | worst {worst:.2f} ({worst_name}, "
        f"P = {worst_row['P'] / 1e6:g}M, K = {worst_row['K']}) | {verdict(worst <= 1.3)} |",
        f"| aggregation throughput >= 50 % of the copy bound | FedGMA {min(shares):.0f} - {max(shares):.0f} % "
        f"| {verdict(min(shares) >= 50)} |",
        "| extra memory flat in K | largest / smallest over K: "
        + ", ".join(f"{n} {v:.3f}" for n, v in flat.items()) + f" | {verdict(max(flat.values()) <= 1.05)} |",
        f"| round time FedGMA / FedAvg <= 1.02 | {ratio:.3f} (95 % interval {low:.3f} - {high:.3f}) "
        f"| {verdict(ratio <= 1.02)} |",
        f"| bytes per client per round, ratio 1.00 | {payload_ratio:.2f} | {verdict(round(payload_ratio, 2) == 1.0)} |",
    ]


PARTS = ("aggregation", "memory", "payload", "rounds", "scale", "imports", "deployment", "fleet")
QUICK_PARTS = ("aggregation", "memory", "payload", "imports")
# The last commit before the round loop polled for replies itself and the library packages imported lazily.
BEFORE_ROUND_LATENCY = "35abdab"


def _keep(figures: dict, key: str, result: tuple[list[str], object]) -> list[str]:
    """Store a part's figures under ``key``; return its table lines."""
    lines, figures[key] = result
    return lines


def replace_block(text: str, name: str, block: str) -> str:
    """``text`` with the block between ``<!-- bench:NAME:begin -->`` and its end marker replaced
    (appended when the markers are missing)."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    if begin not in text:
        return f"{text.rstrip()}\n\n{begin}\n{block}{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{block}{end}{tail}"


README_BLOCKS = ("imports", "deployment")  # also shown in the README, where it has their markers


def main(output: Path | None, quick: bool = False, parts: tuple[str, ...] | None = None,
         readme: Path | None = None) -> int:
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower logs every sampling and aggregation
    _identity()
    parts = parts or (QUICK_PARTS if quick else PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"fedgma bench: unknown part(s) {', '.join(unknown)}; expected some of {', '.join(PARTS)}")
    sizes = [1_000_000] if quick else [1_000_000, 10_000_000]
    clients = [10, 50] if quick else [10, 50, 100]
    blocks: dict[str, list[str]] = {"machine": [f"Machine: {machine()}."]}
    figures: dict = {}  # what the targets are checked against
    print(blocks["machine"][0], flush=True)

    def emit(name: str, header: list[str], rows: list[str], seconds: float) -> None:
        blocks[name] = [*header, *rows, "", f"Measured in {seconds:.0f} s."]
        print("\n".join(blocks[name]), flush=True)

    for part in parts:
        started = time.perf_counter()
        if part == "aggregation":
            table, figures["times"] = time_table(sizes, clients, repeats=5)
            emit(part, ["**aggregate_train time** (median of 5, interleaved; identical replies for every "
                        "strategy; one thread each):", ""], table, time.perf_counter() - started)
        elif part == "memory":
            emit(part, ["**Peak extra memory of one aggregate_train** (tracemalloc, P = 1M float32; the replies "
                        "themselves are not counted: Flower holds them before the strategy runs):", ""],
                 _keep(figures, "peaks", memory_table(1_000_000, clients)), time.perf_counter() - started)
        elif part == "payload":
            emit(part, ["**Bytes a client receives per round** (P = 1M; arrays plus config):", "",
                        "| strategy | bytes | ratio to FedAvg |", "|---|---|---|"],
                 _keep(figures, "payload", payload_bytes(1_000_000)), time.perf_counter() - started)
        elif part == "rounds":
            emit(part, ["**Seconds per round in simulation** (10 clients x 500 images x 3 local epochs, IID "
                        "binary task, central evaluation on 2 x 2,000 images; 3 runs of 16 rounds each, "
                        "alternating FedAvg and FedGMA; rounds 2+):", "",
                        "| strategy | rounds | mean s | median s | mean / FedAvg | 95 % interval (bootstrap) |",
                        "|---|---|---|---|---|---|"], _keep(figures, "rounds", round_times()),
                 time.perf_counter() - started)
        elif part == "scale":
            emit(part, ["**Simulation at scale**: 1,000 virtual clients (all 60,000 training images, 60 each), "
                        "100 sampled per round, FedGMA ws, 3 local epochs, 2 Ray workers:", "",
                        "| round | replies | round s | waiting for replies s | aggregation s | central eval s "
                        "| client set-up s (mean) | client training s (mean) |",
                        "|---|---|---|---|---|---|---|---|"], simulation_scale(), time.perf_counter() - started)
        elif part == "imports":
            emit(part, ["**What a ClientApp process imports** (median of 7 fresh interpreters: flwr's ClientApp API "
                        "and torch, then our client app on top; the target is at most 0.1 s on top):", ""],
                 round_latency.import_table(BEFORE_ROUND_LATENCY), time.perf_counter() - started)
        elif part == "deployment":
            emit(part, ["**Where a round's time goes, deployed and simulated**: FedGMA ws, 3 clients x 500 images "
                        "x 3 local epochs, client evaluation on, one torch thread per ClientApp; deployed: "
                        "`fedgma-superlink` + 3 `flower-supernode` processes over gRPC on loopback; simulated: "
                        "Flower's simulation runtime; 2 runs of each, before and after alternating, rounds 2-6 of "
                        "each run (round 1 also builds the partition caches). *before*: the round loop waits "
                        "through Flower's `Grid.send_and_receive` (`reply-poll-interval = 0`); *after*: it polls every "
                        f"{app_defaults()['reply-poll-interval']} s (the default). Seconds (share of the round):", ""],
                 round_latency.table(*round_latency.measure()), time.perf_counter() - started)
        elif part == "fleet":
            flood_header = [
                "", "**A flood of concurrent unauthenticated messages to the Fleet API** (gRPC, no TLS, loopback; "
                "each message 64 KiB under the SuperLink's message bound, under 8 MiB for `flower-superlink`; all "
                "connections opened first, then released together, each call at most 30 s; memory is the resident "
                "set summed over the SuperLink's process tree, sampled every 10 ms; the largest message an honest "
                f"SuperNode sends is {largest_honest_message():,} bytes):", "",
                "| launcher | bounds (message, calls) | flood | answers | seconds | memory before "
                "| peak extra memory |",
                "|---|---|---|---|---|---|---|"]
            emit(part, ["**One unauthenticated message to the Fleet API** (gRPC, no TLS, loopback; sizes in "
                        "order, one SuperLink per launcher; memory is the SuperLink process's resident set, "
                        "sampled every 10 ms; `fedgma-superlink` at its default bound of 8 MiB):", "",
                        "| launcher | message | answer | peak extra memory | kept after 1 s |",
                        "|---|---|---|---|---|"], [*fleet_messages(), *flood_header, *fleet_flood()],
                 time.perf_counter() - started)
    if {"times", "peaks", "payload", "rounds"} <= figures.keys():
        blocks["targets"] = ["**Targets** (from the tables below, this run):", "", *target_lines(**figures)]
        print("\n".join(blocks["targets"]), flush=True)
    if output is not None:
        text = output.read_text() if output.exists() else "# Benchmarks\n"
        for name, lines in blocks.items():
            text = replace_block(text, name, "\n".join(lines) + "\n")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"written to {output}")
    if readme is not None:
        text = readme.read_text()
        shown = [name for name in README_BLOCKS if name in blocks and f"<!-- bench:{name}:begin -->" in text]
        for name in shown:
            text = replace_block(text, name, "\n".join(blocks[name]) + "\n")
        readme.write_text(text)
        print(f"{', '.join(shown) or 'nothing'} written to {readme}")
    return 0
