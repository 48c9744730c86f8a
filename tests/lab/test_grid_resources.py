"""Where a grid's runs go: several at once, a Ray cluster, GPU clients (the options, not the runs;
tests/e2e/test_e2e_grid.py and test_e2e_ray_cluster.py make real runs)."""

import os

import pytest

from fedgma import cli
from fedgma.deployment.flower import SimulationResources, SimulationRuntime
from fedgma.lab.experiments.grids import grid_by_name
from fedgma.lab.experiments.runner import GridRunner


def test_federation_config_carries_the_client_resources_and_a_private_rays_cpus():
    assert SimulationResources().federation_config(10) == "num-supernodes=10 client-resources-num-cpus=1"
    gpu = SimulationResources(client_cpus=2, client_gpus=0.25, ray_cpus=4)
    assert gpu.federation_config(50) == ("num-supernodes=50 client-resources-num-cpus=2 "
                                         "client-resources-num-gpus=0.25 init-args-num-cpus=4")
    # The cluster's address is no Flower 1.39 federation field: it reaches ray.init() as RAY_ADDRESS.
    cluster = SimulationResources(ray_address="10.0.0.1:6379")
    assert cluster.federation_config(2) == "num-supernodes=2 client-resources-num-cpus=1"
    assert cluster.environment() == {"RAY_ADDRESS": "10.0.0.1:6379"} and cluster.joins_cluster
    assert SimulationResources().environment() == {"RAY_ADDRESS": "local"}


def test_the_simulation_runtime_hands_the_ray_address_to_the_superlink(tmp_path):
    runtime = SimulationRuntime(tmp_path, resources=SimulationResources(ray_address="auto"))
    assert runtime.env["RAY_ADDRESS"] == "auto"
    assert SimulationRuntime(tmp_path).env["RAY_ADDRESS"] == "local"  # not a cluster found by chance


@pytest.mark.parametrize("kwargs, problem", [
    ({"ray_address": ""}, "Ray address"),
    ({"ray_address": "head node"}, "Ray address"),
    ({"ray_address": "headnode"}, "Ray address"),
    ({"ray_address": "head:port"}, "Ray address"),
    ({"ray_address": ":6379"}, "Ray address"),
    ({"client_cpus": 0}, "CPUs per client"),
    ({"client_cpus": 1.5}, "CPUs per client"),
    ({"client_gpus": -0.5}, "GPUs per client"),
    ({"ray_cpus": 0}, "private Ray"),
    ({"ray_address": "auto", "ray_cpus": 2}, "private Ray"),
])
def test_bad_resources_are_refused_with_the_reason(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        SimulationResources(**kwargs)


def test_jobs_split_a_private_rays_cores_and_are_refused_on_a_cluster(tmp_path):
    grid = grid_by_name("smoke")
    runner = GridRunner(grid, tmp_path, jobs=2)
    assert runner.resources_for(1).ray_cpus is None  # one run at a time: Ray takes every core, as before
    assert runner.resources_for(2).ray_cpus == max(1, (os.cpu_count() or 1) // 2)
    assert runner.resources_line(1) == "one run at a time, each with a private Ray (all CPUs); each client 1 CPU"
    assert runner.resources_line(2).startswith("2 runs at once, each with a private Ray (")
    with pytest.raises(ValueError, match="jobs must be"):
        GridRunner(grid, tmp_path, jobs=0)
    with pytest.raises(ValueError, match="whole cluster"):
        GridRunner(grid, tmp_path, jobs=2, resources=SimulationResources(ray_address="auto"))
    one = GridRunner(grid, tmp_path, resources=SimulationResources(ray_address="10.0.0.1:6379", client_gpus=0.5))
    assert one.resources_for(1).ray_address == "10.0.0.1:6379"
    assert one.resources_line(1) == "one run at a time, on the Ray cluster at 10.0.0.1:6379; each client 1 CPU, 0.5 GPU"


@pytest.mark.parametrize("args, message", [
    (["--jobs", "0"], "jobs must be an integer >= 1"),
    (["--jobs", "2", "--ray-address", "auto"], "whole cluster"),
    (["--ray-address", "nowhere"], "Ray address must be local, auto or HOST:PORT"),
    (["--ray-address", ""], "Ray address must be local, auto or HOST:PORT"),
    (["--device", "cpu", "--ray-address", "10.0.0.1:6379"], "--device does not reach a Ray cluster's clients"),
    (["--device", "cuda"], "--device cuda needs --client-gpus above 0"),
    (["--client-gpus", "-1"], "GPUs per client"),
    (["--device", "tpu"], "--device: 'device' must be auto, cpu, cuda or cuda:N"),
    (["--runs", "binary-non-iid_fedavg_seed0,no-such-run"], "has no run no-such-run;"),
    (["--runs", "binary-non-iid_fedavg_seed1"], "did you mean binary-non-iid_fedavg_seed0"),
])
def test_the_grid_command_refuses_bad_resource_options_before_starting(tmp_path, capsys, args, message):
    code = cli.main(["grid", "run", "smoke", "--results-dir", str(tmp_path / "r"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing started


def test_resources_a_private_ray_cannot_give_are_refused_before_any_run(tmp_path):
    from fedgma.deployment.flower import HostSettings
    from fedgma.lab.experiments.runner import usable_cores

    grid = grid_by_name("smoke")
    too_many = usable_cores() + 1  # each job's Ray gets 1 CPU, fewer than a client's 2
    with pytest.raises(ValueError, match="fewer than the 2 each client reserves"):
        GridRunner(grid, tmp_path, jobs=too_many, resources=SimulationResources(client_cpus=2))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="this machine has no GPU"):
            GridRunner(grid, tmp_path, resources=SimulationResources(client_gpus=0.5))
        with pytest.raises(ValueError, match="no GPU"):
            GridRunner(grid, tmp_path, resources=SimulationResources(client_gpus=0.5), data=HostSettings(device="cuda"))


def test_the_ray_address_comes_from_the_environment_unless_given(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    # From the environment: a cluster, so two jobs are refused ...
    assert cli.main(["grid", "run", "smoke", "--results-dir", str(tmp_path), "--jobs", "2"]) == 2
    assert "cluster (auto)" in capsys.readouterr().err
    # ... unless the command names a private Ray.
    assert cli.main(["grid", "status", "smoke", "--results-dir", str(tmp_path), "--jobs", "2",
                     "--ray-address", "local"]) == 0


def test_a_run_in_which_no_round_updated_the_model_is_failed_moved_aside_and_its_log_kept(tmp_path):
    """E.g. every client's training raised: the ServerApp ends the run (fewer rounds than
    max-failed-rounds), but a grid must neither count it nor skip it next time."""
    from types import SimpleNamespace

    from fedgma.app.outputs import RunOutputs
    from fedgma.app.server_app import run_directory
    from fedgma.deployment.flower import RunStatus
    from fedgma.lab.experiments.runner import _Progress

    lines = []
    runner = GridRunner(grid_by_name("smoke"), tmp_path, echo=lines.append)
    spec = runner.grid.runs[0]
    config = runner.validated(spec)

    def run_ends_without_an_update(*args, **kwargs):  # what the ServerApp writes for such a run
        outputs = RunOutputs(run_directory(config, 1, runner.runs_dir))
        outputs.write_config(config, {"run-id": 1})
        for round_number in range(3):
            outputs.add_row({"round": round_number, "wall-seconds": round_number, "id-accuracy": 0.5,
                             "ood-accuracy": 0.44, **({"model-updated": 0} if round_number else {})})
        outputs.write_summary(spec.label)
        assert runner.is_finished(spec)
        return RunStatus(7, "finished:completed", "", {})

    cli = SimpleNamespace(submit=lambda *a: 7, wait=run_ends_without_an_update,
                          logs=lambda run_id: "INFO ...\nERROR : ValueError: node config: 'device' is 'cuda', but "
                                              "this node has no CUDA device(s)\n")
    runtime = SimpleNamespace(cli=cli, resources=SimulationResources(), workdir=tmp_path / "runtime")
    assert runner._make(spec, "[1/5]", runtime, _Progress([spec])) is False
    assert not runner.is_finished(spec)  # run again next time
    assert [p.name.startswith(f"{spec.name}.no-update-") for p in runner.runs_dir.iterdir()] == [True]
    assert "FAILED (no round updated the model" in lines[-1] and "no CUDA device" in lines[-1]
    assert "CUDA" in (tmp_path / "runtime" / "failed" / f"{spec.name}.log").read_text()


def test_the_cluster_estimate_scales_only_the_clients_waves():
    from fedgma.lab.bench.jobs import RoundSplit

    # Measured here: 10 clients on 2 CPUs (5 waves of 0.4 s) and 0.2 s of dispatch in a 2.2 s wait.
    split = RoundSplit(round_s=2.7, train_wait_s=2.2, client_train_s=0.4, sampled=10, actors=2)
    assert split.estimate(2) == pytest.approx(2.7)  # the measured machine: the measured round
    assert split.estimate(10) == pytest.approx(2.7 - 2.2 + 0.2 + 0.4)  # one wave
    assert split.estimate(20) == split.estimate(10)  # more CPUs than clients: nothing more to gain
    assert split.estimate(4) == pytest.approx(0.5 + 0.2 + 3 * 0.4)
    assert split.bound() == pytest.approx(0.5 + 0.2)  # the clients' training taking no time


def test_the_jobs_projection_splits_a_run_into_fixed_seconds_and_rounds():
    from fedgma.lab.bench.jobs import JobsPace

    # One job: 4 runs of 10 rounds in 200 s, 2.5 s per round 2+: 50 s a run, 27.5 s of it fixed.
    one = JobsPace(jobs=1, runs=4, rounds=10, seconds=200.0, round_s=2.5)
    assert one.fixed_s == pytest.approx(50 - 9 * 2.5)
    assert one.runs_per_hour() == pytest.approx(72.0)
    assert one.runs_per_hour(10) == pytest.approx(one.runs_per_hour())  # the measured length: the measurement
    assert one.runs_per_hour(50) == pytest.approx(3600 / (27.5 + 49 * 2.5))
    # Two jobs sharing the cores: a faster batch (start-ups overlap), each job's rounds 2.4x as slow.
    two = JobsPace(jobs=2, runs=4, rounds=10, seconds=150.0, round_s=6.0)
    assert two.fixed_s == pytest.approx(75 - 9 * 6.0)
    assert two.runs_per_hour() > one.runs_per_hour()
    assert two.runs_per_hour(50) == pytest.approx(2 * 3600 / (21 + 49 * 6.0))
    assert two.runs_per_hour(50) < one.runs_per_hour(50)  # with long runs the overlap no longer pays


def test_grid_status_counts_finished_runs_per_setting_and_lists_named_runs(tmp_path, capsys):
    assert cli.main(["grid", "status", "when", "--results-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["opposite-partial", "0/50", "finished"]  # the grid's order
    when = grid_by_name("when")
    settings = len({spec.setting for spec in when.runs})
    assert len(lines) == 1 + settings + bool(when.cut)  # no line per run
    if when.cut:  # runs planned past the budget are counted apart, and pointed to
        assert lines[-1] == (f"grid when: {len(when.cut)} more runs were planned and cut to fit the grid's budget "
                             "of machine time (docs/experiments.md says which; --uncut counts and runs them too)")
    # --uncut: the whole plan, its cut runs included (how a bigger budget resumes the plan).
    assert cli.main(["grid", "status", "when", "--uncut", "--results-dir", str(tmp_path)]) == 0
    uncut = capsys.readouterr().out.splitlines()
    assert f"grid when: 0/{len(when.runs) + len(when.cut)} runs finished in {tmp_path}" in uncut
    assert not any("cut to fit" in line for line in uncut)
    last = when.runs[-1].name
    assert cli.main(["grid", "status", "when", "--results-dir", str(tmp_path), "--runs", last]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == [last]
    assert cli.main(["grid", "status", "smoke", "--results-dir", str(tmp_path), "--runs", "all"]) == 0
    assert capsys.readouterr().out.splitlines()[:5] == [f"      {spec.name}" for spec in grid_by_name("smoke").runs]
    # A results folder that does not exist (a typo?) is said so, not just counted as empty.
    assert cli.main(["grid", "status", "smoke", "--results-dir", str(tmp_path / "nosuch")]) == 0
    assert "0/5 runs finished in" in (out := capsys.readouterr().out) and "does not exist: nothing has run there" in out
    assert "does not exist" not in (cli.main(["grid", "status", "smoke", "--results-dir", str(tmp_path)]),
                                    capsys.readouterr().out)[1]


def test_a_status_poll_past_its_timeout_is_asked_again_and_only_a_run_of_them_gives_up(monkeypatch, capsys):
    """On a busy machine `flwr ls` once took over its 120 s and ended a whole grid; the run was fine."""
    import subprocess

    from fedgma.deployment import flower

    monkeypatch.setattr(flower.time, "sleep", lambda seconds: None)
    answers: list[object] = []

    def status(run_id):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    cli = flower.FlowerCli({}, "sim")
    monkeypatch.setattr(cli, "status", status)
    slow = subprocess.TimeoutExpired(["flwr", "ls"], 120)
    answers[:] = [slow, RuntimeError("flwr ls failed (1): busy"), {"status": "running"}, slow,
                  {"status": "finished:completed", "status-details": ""}]
    assert cli.wait(7, timeout=3600, poll=0).completed and not answers
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 3 and said[0].startswith("run 7: status not read (Command '['flwr', 'ls']' timed out")
    answers[:] = [slow] * flower.STATUS_TRIES
    with pytest.raises(RuntimeError, match=f"status could not be read {flower.STATUS_TRIES} times in a row"):
        cli.wait(7, timeout=3600, poll=0)


def test_a_run_whose_status_cannot_be_read_fails_alone_not_the_grid(tmp_path):
    from types import SimpleNamespace

    from fedgma.lab.experiments.runner import _Progress

    lines, stopped = [], []
    runner = GridRunner(grid_by_name("smoke"), tmp_path, echo=lines.append)
    spec = runner.grid.runs[0]

    def unreadable(*args, **kwargs):
        raise RuntimeError("run 7: its status could not be read 5 times in a row; the last: timed out")

    cli = SimpleNamespace(submit=lambda *a: 7, wait=unreadable, stop_run=stopped.append, logs=lambda run_id: "")
    runtime = SimpleNamespace(cli=cli, resources=SimulationResources(), workdir=tmp_path / "runtime")
    assert runner._make(spec, "[1/5]", runtime, _Progress([spec])) is False
    assert stopped == [7] and "FAILED (run 7: its status could not be read 5 times in a row" in lines[-1]
