"""The pieces of ``fedgma bench`` that turn measurements into tables (not timings themselves)."""

import subprocess
import sys
import time

import pytest

from fedgma.lab.bench import round_latency, target_lines
from fedgma.lab.bench.aggregation import ratio_interval
from fedgma.lab.bench.rounds import TreeMemory
from fedgma.lab.markdown import bench_markers, replace_block


def test_round_parts_split_the_round_and_sum_to_it():
    rows = [
        {"round-seconds": "20", "train-wait-seconds": "12", "train-reply-lag-seconds": "1",
         "pull-wait-seconds": "2", "clientapp-start-seconds": "3", "setup-seconds": "0.5", "train-seconds": "4.5",
         "aggregate-seconds": "0.5", "client-eval-wait-seconds": "6", "client-eval-reply-lag-seconds": "0.5",
         "central-eval-seconds": "1"},
        {"round-seconds": "30", "train-wait-seconds": "16", "train-reply-lag-seconds": "3",
         "pull-wait-seconds": "2", "clientapp-start-seconds": "5", "setup-seconds": "0.5", "train-seconds": "4.5",
         "aggregate-seconds": "0.5", "client-eval-wait-seconds": "10", "client-eval-reply-lag-seconds": "1.5",
         "central-eval-seconds": "1"},
    ]
    parts = round_latency.round_parts(rows)
    # Means: round 25, train wait 14 = pull 2 + start 4 + work 5 + lag 2 + rest 1; eval 8 = 7 + 1; other 1.5.
    by_key = dict(zip([label for label, _ in round_latency.ROUND_PARTS], parts.values(), strict=False))
    assert list(by_key.values()) == pytest.approx([2, 4, 5, 2, 1, 0.5, 7, 1, 1, 1.5])
    assert parts["round"] == 25 and sum(by_key.values()) == pytest.approx(25)
    # Simulation: no ClientApp process start (empty cells) and nothing missing.
    simulated = [{**rows[0], "clientapp-start-seconds": ""}]
    assert round_latency.round_parts(simulated)[round_latency.ROUND_PARTS[1][0]] == 0.0


def test_the_latency_table_gives_shares_ratios_and_the_superlink_cpu():
    def measured(round_s, cpu=None):
        parts = {label: round_s / len(round_latency.ROUND_PARTS) for label, _ in round_latency.ROUND_PARTS}
        return round_latency.Measured({**parts, "round": round_s}, 10, cpu)

    results = {("simulated", "before"): measured(2.0), ("simulated", "after"): measured(2.0),
               ("deployed", "before"): measured(20.0, 0.055), ("deployed", "after"): measured(16.0, 0.08)}
    lines = round_latency.table(results, idle_cpu=0.037)
    assert lines[0].count("|") == 7 and "deployed, after" in lines[0]
    assert lines[2].endswith("| 0.20 s (10 %) | 0.20 s (10 %) | 2.00 s (10 %) | 1.60 s (10 %) |")
    text = "\n".join(lines)
    assert "before: deployed / simulated round time **10.00**" in text and "5.5 % of one core" in text
    assert "after: deployed / simulated round time **8.00**" in text and "8.0 % of one core" in text
    assert "connected: 3.7 %" in text and "after / before: **0.80** (+4.00 s per round)" in text


def test_process_cpu_seconds_counts_this_process():
    import os

    before = round_latency.process_cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert round_latency.process_cpu_seconds(os.getpid()) - before >= 0.2


def test_ratio_interval_brackets_the_ratio_of_means_and_is_reproducible():
    base = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95]
    values = [v * 1.5 for v in base]
    low, high = ratio_interval(values, base)
    assert low < 1.5 < high and high - low < 0.3
    assert ratio_interval(values, base) == (low, high)
    assert ratio_interval([2.0] * 5, [1.0] * 5) == (2.0, 2.0)


def test_replace_block_rewrites_only_its_own_block_and_appends_new_ones():
    text = "# B\n<!-- bench:a:begin -->\nold a\n<!-- bench:a:end -->\nkeep\n"
    text = replace_block(text, *bench_markers("a"), append_missing=True, block="new a\n")
    assert text == "# B\n<!-- bench:a:begin -->\nnew a\n<!-- bench:a:end -->\nkeep\n"
    text = replace_block(text, *bench_markers("b"), append_missing=True, block="b\n")
    assert text.endswith("keep\n\n<!-- bench:b:begin -->\nb\n<!-- bench:b:end -->\n")
    assert replace_block(text, *bench_markers("a"), append_missing=True, block="again\n").count("again") == 1


def test_tree_memory_counts_the_memory_of_child_processes():
    size = 200 * 2**20
    code = f"b = b'x' * {size}; import time; time.sleep(3)"  # written, so resident
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {code!r}])"
    parent = subprocess.Popen([sys.executable, "-c", child])
    try:
        with TreeMemory(parent.pid, interval=0.1) as memory:
            deadline = time.monotonic() + 20
            while memory.peak_bytes < size and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        parent.wait(30)
    assert memory.peak_bytes >= size  # the grandchild's buffer
    assert memory.peak_processes >= 2


def test_targets_name_the_worst_case_and_say_missed():
    times = [
        {"P": 1e6, "K": 10, "FedAvg (Flower)": 0.010, "FedGMA ws": 0.014, "FedGMA gma": 0.012,
         "bytes": 4e7, "bandwidth": 8e9},  # ws: 1.4x FedAvg; 4e7 / 0.014 / 8e9 = 36 % of copy
        {"P": 1e7, "K": 100, "FedAvg (Flower)": 1.0, "FedGMA ws": 0.5, "FedGMA gma": 0.5,
         "bytes": 4e9, "bandwidth": 8e9},  # 100 % of copy
    ]
    peaks = {"FedAvg (Flower)": [2.0, 2.0], "FedGMA ws": [3.0, 3.3], "FedGMA gma": [3.0, 3.0]}
    payload = {"FedAvg (Flower)": 1.0, "FedGMA ws": 1.0, "FedGMA gma": 1.0}
    rows = {line.split(" | ")[0].lstrip("| "): line for line in target_lines(times, peaks, payload, (1.01, 0.9, 1.1))}
    time_row = rows["aggregate_train FedGMA / FedAvg <= 1.3 at every K and P"]
    assert "worst 1.40 (FedGMA ws, P = 1M, K = 10)" in time_row and time_row.endswith("**missed** |")
    assert "FedGMA 36 - 100 %" in rows["aggregation throughput >= 50 % of the copy bound"]
    flat = rows["extra memory flat in K"]
    assert "FedGMA ws 1.100" in flat and flat.endswith("**missed** |")
    assert rows["round time FedGMA / FedAvg <= 1.02"].endswith("| met |")
    assert rows["bytes per client per round, ratio 1.00"].endswith("| met |")
