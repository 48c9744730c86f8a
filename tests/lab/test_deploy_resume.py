"""``fedgma compose run`` resumes a run whose ServerApp was lost with the SuperLink.

The decision (fast, no processes): which endings are retried, as a resume or anew, and which are
not (a run that failed for its own reasons; no resume left). End to end on loopback: a
``fedgma superlink`` with a ``--database`` file, TLS and two SuperNodes; a run with a bad setting
is not retried and ``run`` exits 1; a 3-round run whose SuperLink is killed with SIGKILL after a
checkpointed round and restarted on the same database is resumed by ``run`` from its checkpoint
and completes, each round in ``metrics.csv`` once, and ``run`` exits 0."""

import csv
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from run_settings import ROOT

from fedgma.deployment.local import LocalDeployment
from fedgma.deployment.resume import APP_FAILURE, LOST_SERVERAPP, Attempt, CheckpointState, checkpoint_state, decide
from fedgma.loop.checkpoint import Checkpoint, load_checkpoint, mark_failed, save_checkpoint

LOST = Attempt(7, "finished:failed", LOST_SERVERAPP)
CLEAN = CheckpointState(visible=True, round=2)


@pytest.mark.parametrize("attempt, checkpoint, left, action", [
    (Attempt(7, "finished:completed", ""), CLEAN, 3, "done"),
    (LOST, CLEAN, 3, "resume"),
    (LOST, CheckpointState(visible=False), 1, "resume"),  # output root not visible: the resume checks it
    (LOST, CheckpointState(visible=True), 3, "restart"),  # lost before round 0 was checkpointed
    (Attempt(7, "finished:failed", "the restarted SuperLink does not know run 7", lost_contact=True), CLEAN, 3,
     "resume"),
    (LOST, CLEAN, 0, "give-up"),  # --max-resumes spent
    (LOST, CheckpointState(visible=True, round=2, failure="3 rounds in a row without a model update"), 3, "give-up"),
    (Attempt(7, "finished:failed", f"{APP_FAILURE}: run config: 'tau' must be in (0, 1]"), CLEAN, 3, "give-up"),
    (Attempt(7, "finished:failed", f"{APP_FAILURE}: boom", lost_contact=True), CLEAN, 3, "give-up"),
    (Attempt(7, "finished:failed", "Task failed with unknown error."), CLEAN, 3, "give-up"),
    (Attempt(7, "finished:stopped", "stopped by the operator", lost_contact=True), CLEAN, 3, "give-up"),
])
def test_only_a_run_lost_with_its_superlink_is_retried(attempt, checkpoint, left, action):
    step = decide(attempt, checkpoint, left)
    assert step.action == action, step
    assert step.reason  # every decision is printed with its reason


def test_the_checkpoint_state_is_read_from_the_output_root(tmp_path):
    settings = {"run-name": "r1", "output-dir": "exp"}
    assert checkpoint_state(None, settings) == CheckpointState(visible=False)
    assert checkpoint_state(tmp_path, settings) == CheckpointState(visible=True)
    run_dir = tmp_path / "exp" / "r1"
    run_dir.mkdir(parents=True)
    save_checkpoint(run_dir, Checkpoint(round=2, arrays={"w": np.zeros(3, np.float32)}, strategy_state={},
                                        wall_seconds=1.0, settings={}, identity={}, history=[]))
    assert checkpoint_state(tmp_path, settings) == CheckpointState(visible=True, round=2)
    assert checkpoint_state(tmp_path, {**settings, "run-name": "other", "resume": "r1"}).round == 2
    mark_failed(run_dir, "the model became non-finite")
    assert checkpoint_state(tmp_path, settings).failure == "the model became non-finite"
    # A run name that leads out of the root is not followed.
    assert checkpoint_state(tmp_path, {"run-name": "x", "resume": "../../etc"}).visible is False


def deploy_run(deployment, certs, run_config, log_path, *extra):
    """``fedgma compose run`` against the deployment, output to ``log_path``."""
    command = [sys.executable, "-m", "fedgma", "compose", "run", f"--superlink=127.0.0.1:{deployment.http_port}",
               f"--ca={certs / 'ca.crt'}", f"--flwr-home={log_path.parent / 'deploy-home'}",
               f"--run-config={run_config}", "--poll=1", "--superlink-wait=120", "--timeout=600", *extra]
    with log_path.open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=dict(os.environ))


@pytest.mark.e2e
def test_deploy_run_resumes_after_the_superlink_is_killed(tmp_path, host_settings):
    certs = tmp_path / "certs"
    subprocess.run(["bash", str(ROOT / "scripts" / "make-certs.sh"), str(certs)], check=True, capture_output=True)
    outputs = host_settings.output_root
    small = "train-images=2000 test-images=1000 num-partitions=2 min-nodes=2"
    with LocalDeployment(tmp_path / "deployment", num_supernodes=2, certs=certs, settings=host_settings,
                         database=tmp_path / "superlink.db") as deployment:
        deployment.wait_for_supernodes()
        # A run that fails for its own reasons is not retried, and `run` says so with exit status 1.
        bad_log = tmp_path / "bad.log"
        bad = deploy_run(deployment, certs, f"{small} num-server-rounds=1 tau=7 run-name='bad'", bad_log,
                         f"--outputs={outputs}")
        assert bad.wait(300) == 1, bad_log.read_text()

        log_path = tmp_path / "deploy.log"
        runner = deploy_run(deployment, certs, f"{small} num-server-rounds=3", log_path, f"--outputs={outputs}")
        try:
            run_dir = wait_for_run_folder(outputs, runner, log_path)
            wait_for_round(run_dir, 1, runner, log_path)
            deployment.kill_superlink()  # SIGKILL, ServerApp included, as an OOM kill of the container
            killed_after = load_checkpoint(run_dir).round
            time.sleep(2)
            deployment.start_superlink()
            code = runner.wait(420)
        finally:
            if runner.poll() is None:
                runner.kill()
        text = log_path.read_text(errors="replace")
    print(text)

    bad_text = bad_log.read_text(errors="replace")
    assert APP_FAILURE in bad_text and "not retried" in bad_text, bad_text
    assert bad_text.count("submitted with") == 1, bad_text
    assert code == 0, text
    assert "attempt 1 of 4" in text and "attempt 2 of 4" in text and "attempt 3 of 4" not in text, text
    assert "flwr ls failed" in text and LOST_SERVERAPP in text and "resuming after round" in text, text
    assert f"'resume': '{run_dir.name}'" in text and text.rstrip().count("finished:completed") == 1, text
    checkpoint = load_checkpoint(run_dir)
    assert (checkpoint.round, checkpoint.failure) == (3, None)
    assert killed_after >= 1
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]  # each round once: resumed, not redone
    assert (run_dir / "final_model.pt").is_file()


def wait_for_run_folder(outputs, runner, log_path, timeout=120):
    """The folder of the run ``runner`` submitted (named ``deploy-<time>``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in outputs.glob("deploy-*") if p.is_dir()] if outputs.is_dir() else []
        if found:
            return found[0]
        assert runner.poll() is None, log_path.read_text()
        time.sleep(0.5)
    raise TimeoutError(f"no run folder below {outputs}:\n{log_path.read_text()}")


def wait_for_round(run_dir, round_number, runner, log_path, timeout=180):
    """Wait until the run's checkpoint holds ``round_number``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        checkpoint = load_checkpoint(run_dir) if (run_dir / "checkpoint.npz").exists() else None
        if checkpoint is not None and checkpoint.round >= round_number:
            return
        assert runner.poll() is None, log_path.read_text()
        time.sleep(0.5)
    raise TimeoutError(f"round {round_number} not checkpointed in {run_dir}:\n{log_path.read_text()}")
