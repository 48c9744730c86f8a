"""examples/sign-agreement, run exactly as its README says, with Flower 1.39 and 1.42.

Each version has a virtualenv with Flower alone (``scripts/setup.sh --tests`` makes them); the
README's bash blocks run there as written, from the example's folder in a copy of this working
tree, with a fresh FLWR_HOME. The test adds only what keeps it apart from other processes on the
machine (FLWR_HOME, the local SuperLink's ports) and Flower's telemetry switches; the variable
that turns run-time dependency installation off comes from the README.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from readme_blocks import code_blocks
from run_settings import ROOT

from fedgma.deployment.processes import free_port, processes_named, stop_trees
from fedgma.loop import load_checkpoint

pytestmark = pytest.mark.e2e
EXAMPLE = Path("examples") / "sign-agreement"
# What `pip install ../..` needs of the repository: the library's package and its metadata.
LIBRARY_FILES = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "fedgma")


@pytest.fixture(params=["1.39", "1.42"], ids=lambda v: f"flwr-{v}")
def flower(request) -> tuple[str, Path]:
    venv = ROOT / ".venvs" / f"example-flwr-{request.param}"
    if not (venv / "bin" / "flwr").is_file():
        pytest.fail(f"{venv} is missing: ./scripts/test.sh makes it (scripts/setup.sh --tests)")
    return request.param, venv


def working_copy(where: Path) -> Path:
    """The library and the example as they are in this working tree (a clone's layout)."""
    where.mkdir(parents=True)
    for name in LIBRARY_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, where / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, where / name)
    shutil.copytree(ROOT / EXAMPLE, where / EXAMPLE, ignore=shutil.ignore_patterns("__pycache__", "outputs"))
    return where / EXAMPLE


def user_environment(venv: Path, flwr_home: Path) -> dict[str, str]:
    """A shell of someone who activated ``venv``: its bin first on PATH."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("FLWR_", "FEDGMA_", "SIGNAGREE_")) and key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv), FLWR_HOME=str(flwr_home),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()), FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
        FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return env


def bash(block: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=cwd, env=env, capture_output=True,
                          text=True, errors="replace", timeout=300)


def runs(cwd: Path, env: dict[str, str]) -> list[dict]:
    listed = subprocess.run(["flwr", "ls", "local", "--format", "json"], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=120)
    return json.loads(listed.stdout)["runs"]


def test_the_example_runs_and_resumes_as_its_readme_says(tmp_path, flower):
    version, venv = flower
    example = working_copy(tmp_path / "clone")
    flwr_home = tmp_path / "flwr-home"
    env = user_environment(venv, flwr_home)
    run_block, resume_block = code_blocks(example / "README.md", language="bash")
    try:
        first = bash(run_block, example, env)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        installed = subprocess.run([str(venv / "bin" / "python"), "-c", "import flwr; print(flwr.__version__)"],
                                   capture_output=True, text=True, check=True).stdout
        assert installed.startswith(version + "."), installed
        (run,) = runs(example, env)
        assert run["status"] == "finished:completed", run
        assert "signagree round 8:" in first.stdout + first.stderr
        assert load_checkpoint(example / "outputs" / "sign-agreement").round == 8

        resumed = bash(resume_block, example, env)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert [r["status"] for r in runs(example, env)] == ["finished:completed"] * 2
        assert "resuming after round 8" in resumed.stdout + resumed.stderr
    finally:
        stop_trees(processes_named(None, f"{flwr_home}/local-superlink"))
    saved = load_checkpoint(example / "outputs" / "sign-agreement")
    assert saved.round == 12 and [r["round"] for r in saved.history] == list(range(13))
    losses = [record["central_metrics"]["pooled-loss"] for record in saved.history]
    assert losses[12] < 0.2 * losses[0]  # it learned the pooled task
    weights = saved.arrays["w"]
    assert weights.dtype == np.float32 and abs(weights[0] - 2.0) < 0.3 and abs(weights[1] + 1.0) < 0.3
    # The core install's commands: each one works or says in one line what it needs.
    assert_core_commands(venv, version, tmp_path, env)


def assert_core_commands(venv: Path, version: str, cwd: Path, env: dict[str, str]) -> None:
    for command in (["fedgma", "grid", "status", "smoke"], ["fedgma", "toy"], ["fedgma", "bench", "--quick"],
                    ["fedgma", "report", "results/full"], ["fedgma", "probe", "results/full"]):
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and not done.stdout, (command, done.stdout, done.stderr)
        assert done.stderr.strip().count("\n") == 0, done.stderr
        assert "pip install 'fedgma[lab]'" in done.stderr, done.stderr
    superlink = subprocess.run(["fedgma", "superlink", "--help"], cwd=cwd, env=env, capture_output=True, text=True,
                               timeout=120)
    if version == "1.39":
        assert superlink.returncode == 0 and "--fleet-api-address" in superlink.stdout
    else:
        assert superlink.returncode == 2 and superlink.stderr.strip().count("\n") == 0, superlink.stderr
        assert "needs flwr 1.39" in superlink.stderr and "pip install 'fedgma[deploy]'" in superlink.stderr
