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
  for replies itself (``deployment``, :mod:`fedgma.lab.round_latency`);
- a grid's runs per hour with one run at a time and two at once (``jobs``).

Writes the tables to ``docs/benchmarks.md`` (between markers) and prints them.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedgma.deployment.app_folder import app_defaults, app_dir

from ..bench_parts import BENCH_PARTS, QUICK_PARTS, README_BLOCKS
from ..markdown import bench_markers, replace_block
from . import round_latency
from .aggregation import _identity, memory_table, payload_bytes, time_table
from .fleet import fleet_flood, fleet_messages, largest_honest_message
from .jobs import BENCH_GRID, PROJECTED_ROUNDS, grid_throughput
from .rounds import round_times, simulation_scale


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


def target_lines(times: list[dict[str, float]], peaks: dict[str, list[float]], payload: dict[str, float],
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


def _keep(figures: dict[str, Any], key: str, result: tuple[list[str], object]) -> list[str]:
    """Store a part's figures under ``key``; return its table lines."""
    lines, figures[key] = result
    return lines



def main(output: Path | None, quick: bool = False, parts: tuple[str, ...] | None = None,
         readme: Path | None = None, before: str | None = None, app: Path | None = None) -> int:
    """Measure ``parts`` (default: all, or the quick ones), print the tables and rewrite their
    blocks in ``output`` (and the README's in ``readme``). ``before``: the git revision the
    ``imports`` table compares with (none: this tree only); ``app``: the Flower app folder the
    parts that run ``flwr run`` submit (default: the checkout)."""
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower logs every sampling and aggregation
    _identity()
    parts = parts or (QUICK_PARTS if quick else BENCH_PARTS)
    unknown = [p for p in parts if p not in BENCH_PARTS]
    if unknown:
        raise SystemExit(f"fedgma bench: unknown part(s) {', '.join(unknown)}; "
                         f"expected some of {', '.join(BENCH_PARTS)}")
    sizes = [1_000_000] if quick else [1_000_000, 10_000_000]
    clients = [10, 50] if quick else [10, 50, 100]
    blocks: dict[str, list[str]] = {"machine": [f"Machine: {machine()}."]}
    figures: dict[str, Any] = {}  # what the targets are checked against
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
                        "|---|---|---|---|---|---|"], _keep(figures, "rounds", round_times(app_dir(app))),
                 time.perf_counter() - started)
        elif part == "scale":
            emit(part, ["**Simulation at scale**: 1,000 virtual clients (all 60,000 training images, 60 each), "
                        "100 sampled per round, FedGMA ws, 3 local epochs, 2 Ray workers:", "",
                        "| round | replies | round s | waiting for replies s | aggregation s | central eval s "
                        "| client set-up s (mean) | client training s (mean) |",
                        "|---|---|---|---|---|---|---|---|"], simulation_scale(app_dir(app)),
                 time.perf_counter() - started)
        elif part == "imports":
            emit(part, ["**What a ClientApp process imports** (median of 7 fresh interpreters: flwr's ClientApp API "
                        "and torch, then our client app on top; the target is at most 0.1 s on top):", ""],
                 round_latency.import_table(app_dir(app), before), time.perf_counter() - started)
        elif part == "deployment":
            emit(part, ["**Where a round's time goes, deployed and simulated**: FedGMA ws, 3 clients x 500 images "
                        "x 3 local epochs, client evaluation on, one torch thread per ClientApp; deployed: "
                        "`fedgma superlink` + 3 `flower-supernode` processes over gRPC on loopback; simulated: "
                        "Flower's simulation runtime; 2 runs of each, before and after alternating, rounds 2-6 of "
                        "each run (round 1 also builds the partition caches). *before*: the round loop waits "
                        "through Flower's `Grid.send_and_receive` (`reply-poll-interval = 0`); *after*: it polls every "
                        f"{app_defaults(app_dir(app))['reply-poll-interval']} s (the default). "
                        "Seconds (share of the round):", ""],
                 round_latency.table(*round_latency.measure(app_dir(app))), time.perf_counter() - started)
        elif part == "jobs":
            emit(part, ["**Grid runs per hour, one at a time and two at once** (`fedgma grid run --jobs`): the "
                        f"first 4 runs of the `{BENCH_GRID}` grid (binary task, 50 clients, 10 sampled per round, "
                        "3 local epochs), shortened to 10 rounds, made once with each number of jobs; every run "
                        "is its own simulation (SuperLink and Ray), and the jobs split the machine's cores. "
                        "Measured: the batch's seconds and runs per hour, each job's seconds per round (rounds "
                        "2+) and a run's seconds beyond them (start-up, round 1, the end); projected from these "
                        f"two parts to the grid's {PROJECTED_ROUNDS}-round runs (an estimate: with more rounds, "
                        "start-up weighs less):", "",
                        "| jobs | how | runs | seconds, the batch | runs per hour | ratio to 1 job "
                        "| seconds per round, each job | seconds per run outside rounds 2+ (start-up, round 1, end) "
                        f"| runs per hour at {PROJECTED_ROUNDS} rounds (estimate) "
                        f"| ratio to 1 job at {PROJECTED_ROUNDS} rounds |",
                        "|---|---|---|---|---|---|---|---|---|---|"],
                 _keep(figures, "jobs", grid_throughput(app_dir(app))),
                 time.perf_counter() - started)
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
                        "sampled every 10 ms; `fedgma superlink` at its default bound of 8 MiB):", "",
                        "| launcher | message | answer | peak extra memory | kept after 1 s |",
                        "|---|---|---|---|---|"], [*fleet_messages(), *flood_header, *fleet_flood()],
                 time.perf_counter() - started)
    if {"times", "peaks", "payload", "rounds"} <= figures.keys():
        blocks["targets"] = ["**Targets** (from the tables below, this run):", "", *target_lines(**figures)]
        print("\n".join(blocks["targets"]), flush=True)
    if output is not None:
        text = output.read_text() if output.exists() else "# Benchmarks\n"
        for name, lines in blocks.items():
            text = replace_block(text, *bench_markers(name), "\n".join(lines) + "\n", append_missing=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"written to {output}")
    if readme is not None:
        text = readme.read_text()
        shown = [name for name in README_BLOCKS if name in blocks and bench_markers(name)[0] in text]
        for name in shown:
            text = replace_block(text, *bench_markers(name), "\n".join(blocks[name]) + "\n")
        readme.write_text(text)
        print(f"{', '.join(shown) or 'nothing'} written to {readme}")
    return 0
