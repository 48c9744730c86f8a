"""The real docker-compose.yml brought up with podman-compose (the machine has no Docker engine and
no registry: tests/containers/ prepares a local base image and the dependencies' virtualenv and
overrides only that). A 3-round FedGMA run with TLS and SuperNode authentication must complete;
everything is torn down afterwards, also on failure."""

import csv
import os
import shutil
import subprocess

import pytest

from fedgma.launch import free_port
from run_settings import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.compose]

OVERRIDE = ROOT / "tests" / "containers" / "compose.podman.yml"


def podman_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (podman, debootstrap)"
    if shutil.which("podman-compose") is None and shutil.which("apt-get") is None:
        return "needs podman-compose, or apt-get to install it"
    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        return "needs Debian's dataset-fashion-mnist (the containers are offline)"
    return None


def run(command, env, timeout=900):
    return subprocess.run(command, env=env, capture_output=True, text=True, errors="replace", timeout=timeout,
                          cwd=ROOT)


def container_logs(name, env, tail=None):
    """Both streams of a container's output (podman logs keeps them apart)."""
    result = run(["podman", "logs", *(["--tail", str(tail)] if tail else []), name], env)
    return result.stdout + result.stderr


@pytest.mark.skipif(podman_unavailable() is not None, reason=str(podman_unavailable()))
def test_compose_file_runs_fedgma_with_podman(tmp_path):
    prepared = run(["bash", str(ROOT / "tests/containers/prepare-podman.sh")], dict(os.environ), timeout=1800)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    env = dict(os.environ)
    for item in prepared.stdout.strip().splitlines()[-1].removeprefix("export ").split():
        key, value = item.split("=", 1)
        env[key] = value
    secrets, outputs = tmp_path / "secrets", tmp_path / "outputs"
    outputs.mkdir()
    run(["bash", str(ROOT / "scripts/make-certs.sh"), str(secrets / "certs"), "superlink"], env)
    run(["bash", str(ROOT / "scripts/make-supernode-keys.sh"), str(secrets / "keys"), "3"], env)
    project = f"fedgmatest{os.getpid()}"
    env.update(
        FEDGMA_SECRETS=str(secrets), FEDGMA_OUTPUTS=str(outputs),
        FEDGMA_FLEET_PORT=str(free_port()), FEDGMA_CONTROL_PORT=str(free_port()),
        FEDGMA_RUN_CONFIG="num-server-rounds=3 train-images=1500 test-images=500 local-epochs=1 download=false",
    )
    compose = ["podman-compose", "-p", project, "-f", str(ROOT / "docker-compose.yml"), "-f", str(OVERRIDE)]
    logs = ""
    try:
        up = run([*compose, "up", "-d", "--build"], env)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        waited = run(["podman", "wait", f"{project}_control_1"], env, timeout=900)
        control_logs = container_logs(f"{project}_control_1", env)
        logs = "\n".join(container_logs(f"{project}_{service}_1", env, tail=40)
                          for service in ("superlink", "supernode-0"))
        assert waited.stdout.strip() == "0", control_logs + logs
    finally:
        down = run([*compose, "down", "-v"], env)
        run(["podman", "network", "rm", "-f", f"{project}_default"], env)
        left = run(["podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={project}",
                    "--format", "{{.Names}}"], env)
    assert down.returncode == 0, down.stderr
    assert left.stdout.strip() == "", f"containers left behind: {left.stdout}"
    assert "registered /keys/supernode-2.pub" in control_logs
    assert "finished:completed" in control_logs, control_logs + logs
    (run_dir,) = outputs.iterdir()  # on the host: survives `down`
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    assert all(int(r["replies-used"]) == 3 for r in rows[1:])
    assert (run_dir / "final_model.pt").stat().st_size > 100_000
