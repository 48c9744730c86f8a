"""Round times in simulation: FedGMA against FedAvg, and at scale; the memory of a process tree
(``fedgma bench --parts rounds,scale``)."""

from __future__ import annotations

import statistics
from pathlib import Path

from fedgma.app.run_folder import RunFolder

from . import round_latency
from .aggregation import ratio_interval


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
        from fedgma.deployment.processes import descendants

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

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def round_times(app: Path, rounds: int = 16, repeats: int = 3) -> tuple[list[str], tuple[float, float, float]]:
    """Seconds per round of FedGMA (ws) and FedAvg in the same simulation settings, alternating runs."""
    import tempfile

    from fedgma.deployment.flower import HostSettings, SimulationRuntime

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
                outcome = runtime.cli.wait(runtime.cli.submit(app, config, federation), timeout=1800)
                if not outcome.completed:
                    raise RuntimeError(f"benchmark run {run_name} ended {outcome.status}")
                rows = round_latency.metrics_rows(RunFolder.at(Path(tmp), "", run_name), 2)  # round 1 starts workers
                seconds[name] += [float(r["round-seconds"]) for r in rows]
    base = seconds["FedAvg (Flower)"]
    lines = []
    for name, values in seconds.items():
        low, high = ratio_interval(values, base)
        ratio = statistics.fmean(values) / statistics.fmean(base)
        lines.append(f"| {name} | {len(values)} | {statistics.fmean(values):.3f} | {statistics.median(values):.3f} "
                     f"| {ratio:.3f} | {low:.3f} - {high:.3f} |")
    return lines, (ratio, low, high)  # the last row's: FedGMA's


def simulation_scale(app: Path, clients: int = 1000, sampled: int = 100, rounds: int = 3) -> list[str]:
    """FedGMA ws in simulation with many virtual clients: seconds per round and peak memory."""
    import tempfile

    from fedgma.deployment.flower import HostSettings, SimulationRuntime

    config = {"num-server-rounds": rounds, "strategy": "fedgma", "variant": "ws", "min-nodes": sampled,
              "fraction-train": sampled / clients, "train-images": 0, "test-images": 2000,
              "partitioning": "iid", "run-name": "scale"}
    federation = f"num-supernodes={clients} client-resources-num-cpus=1"
    with tempfile.TemporaryDirectory() as tmp, SimulationRuntime(
        Path(tmp) / "runtime", HostSettings(output_root=Path(tmp), download=False)
    ) as runtime:
        assert runtime.process is not None
        with TreeMemory(runtime.process.pid) as memory:
            run_id = runtime.cli.submit(app, config, federation)
            outcome = runtime.cli.wait(run_id, timeout=3600)
        if not outcome.completed:
            raise RuntimeError(f"scale run ended {outcome.status}: {outcome.details}")
        rows = round_latency.metrics_rows(RunFolder.at(Path(tmp), "", "scale"), 1)
    lines = [f"| {r['round']} | {r['replies-used']} | {float(r['round-seconds']):.1f} "
             f"| {float(r['train-wait-seconds']):.1f} | {float(r['aggregate-seconds']):.3f} "
             f"| {float(r['central-eval-seconds']):.2f} | {float(r['setup-seconds']):.3f} "
             f"| {float(r['train-seconds']):.3f} |" for r in rows]
    lines += ["", f"Peak memory of the whole simulation (SuperLink, ServerApp, Ray and its workers; PSS summed "
              f"over {memory.peak_processes} processes): {memory.peak_bytes / 2**30:.2f} GiB."]
    return lines


