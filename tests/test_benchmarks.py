"""The pieces of ``fedgma bench`` that turn measurements into tables (not timings themselves)."""

import subprocess
import sys
import time

import pytest

from fedgma.lab.benchmarks import TreeMemory, deployment_breakdown, ratio_interval, replace_block, target_lines


def test_deployment_breakdown_splits_the_round_and_sums_to_it():
    rows = [
        {"round-seconds": "20", "train-wait-seconds": "16", "clientapp-start-seconds": "4",
         "setup-seconds": "1", "train-seconds": "6", "aggregate-seconds": "0.5",
         "central-eval-seconds": "2"},
        {"round-seconds": "30", "train-wait-seconds": "24", "clientapp-start-seconds": "6",
         "setup-seconds": "1", "train-seconds": "10", "aggregate-seconds": "0.5",
         "central-eval-seconds": "2"},
    ]
    lines = deployment_breakdown(rows)
    cells = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in lines}
    # Means: round 25, wait 20, start 5, setup 1, train 8 -> Flower 6; aggregation 0.5, eval 2 -> other 2.5.
    assert cells["ClientApp process start-up"] == ["5.00", "20 % |"]
    assert cells["local training"] == ["8.00", "32 % |"]
    assert cells["Flower: polling and transport (the rest of the wait)"] == ["6.00", "24 % |"]
    assert cells["other (client evaluation, checkpoint, logging)"] == ["2.50", "10 % |"]
    assert cells["**round** (2 rounds, mean)"] == ["**25.00**", "100 % |"]
    shares = [float(v[0]) for k, v in cells.items() if not k.startswith("**")]
    assert sum(shares) == pytest.approx(25.0)


def test_ratio_interval_brackets_the_ratio_of_means_and_is_reproducible():
    base = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95]
    values = [v * 1.5 for v in base]
    low, high = ratio_interval(values, base)
    assert low < 1.5 < high and high - low < 0.3
    assert ratio_interval(values, base) == (low, high)
    assert ratio_interval([2.0] * 5, [1.0] * 5) == (2.0, 2.0)


def test_replace_block_rewrites_only_its_own_block_and_appends_new_ones():
    text = "# B\n<!-- bench:a:begin -->\nold a\n<!-- bench:a:end -->\nkeep\n"
    text = replace_block(text, "a", "new a\n")
    assert text == "# B\n<!-- bench:a:begin -->\nnew a\n<!-- bench:a:end -->\nkeep\n"
    text = replace_block(text, "b", "b\n")
    assert text.endswith("keep\n\n<!-- bench:b:begin -->\nb\n<!-- bench:b:end -->\n")
    assert replace_block(text, "a", "again\n").count("again") == 1


def test_tree_memory_counts_the_memory_of_child_processes():
    size = 200 * 2**20
    code = f"b = b'x' * {size}; import time; time.sleep(3)"  # written, so resident
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {code!r}])"])
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
    assert "FedGMA ws 1.100" in rows["extra memory flat in K"] and rows["extra memory flat in K"].endswith("**missed** |")
    assert rows["round time FedGMA / FedAvg <= 1.02"].endswith("| met |")
    assert rows["bytes per client per round, ratio 1.00"].endswith("| met |")


def test_cpu_busy_share_is_busy_over_total_jiffies():
    from fedgma.lab.benchmarks import cpu_busy_share

    assert cpu_busy_share((100, 1000), (250, 1200)) == pytest.approx(0.75)
    assert cpu_busy_share((5, 10), (5, 10)) == 0.0
