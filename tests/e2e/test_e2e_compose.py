"""The real docker-compose.yml brought up with podman-compose (the machine has no Docker engine and
no registry: tests/containers/ prepares a local base image and the dependencies' virtualenv and
overrides only that). A 3-round FedGMA run with TLS and SuperNode authentication must complete,
each SuperNode handing its ClientApp tasks to its own SuperExec (process isolation with a
shared secret), and what the file promises is checked on the running containers: a non-root user without
capabilities or new privileges, a read-only root, memory, process and restart limits, only the
keys each container needs, and a Control API that nothing but the one-shot services can reach.
Mid-run, the SuperLink's process is killed with SIGKILL (as at its memory limit): the container
restarts with its state, and `control`, still in its network namespace, resumes the run from its
checkpoint to completion, each round once. Everything is torn down afterwards, also on failure."""

import ast
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_settings import ROOT

from fedgma.deployment.processes import free_port
from fedgma.loop.checkpoint import CheckpointError, load_checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.compose]

OVERRIDE = ROOT / "tests" / "containers" / "compose.podman.yml"
PODMAN_COMPOSE = Path(sys.executable).parent / "podman-compose"  # 1.6: pids_limit, depends_on conditions
APP_UID = 49999
SERVICES = ("superlink", "register", "control", "supernode-0", "supernode-1", "supernode-2",
            "superexec-0", "superexec-1", "superexec-2")


def podman_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (podman, debootstrap)"
    if shutil.which("podman") is None and shutil.which("apt-get") is None:
        return "needs podman, or apt-get to install it"
    if not PODMAN_COMPOSE.exists():
        return f"needs podman-compose in {PODMAN_COMPOSE.parent} (the test extra)"
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


def in_container(name, env, code):
    """Run Python code in a running container; (exit status, output)."""
    result = run(["podman", "exec", name, "python", "-c", code], env, timeout=120)
    return result.returncode, result.stdout + result.stderr


LISTENERS = """
import socket
for table, family in (('/proc/net/tcp', socket.AF_INET), ('/proc/net/tcp6', socket.AF_INET6)):
    for line in open(table).read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == '0A':  # LISTEN
            address, port = local.split(':')
            raw = bytes.fromhex(address)
            raw = b''.join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # per 32-bit word
            print(socket.inet_ntop(family, raw), int(port, 16))
"""
CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    print('connected')
except OSError as err:
    print('refused', err)
"""
PRIVILEGES = """
import os
status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())
print(os.getuid(), os.getgid(), status['CapEff'].strip(), status['NoNewPrivs'].strip())
for path in ('/app/probe', '/usr/probe'):
    try:
        open(path, 'w').close()
        print('writable', path)
    except OSError as err:
        print('read-only', path, err.errno)
"""


KILL_SUPERLINK = """
import os
for pid in filter(str.isdigit, os.listdir('/proc')):
    if int(pid) != os.getpid() and b'fedgma\\x00superlink' in open(f'/proc/{pid}/cmdline', 'rb').read():
        os.kill(int(pid), 9)
        print('killed', pid)
"""


def wait_for_checkpoint(outputs, control, env, round_number=1, timeout=600):
    """The run folder (on the host) once its checkpoint holds ``round_number``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for checkpoint in outputs.glob("*/checkpoint.npz"):
            try:
                if load_checkpoint(checkpoint.parent).round >= round_number:
                    return checkpoint.parent
            except CheckpointError:  # being replaced
                pass
        time.sleep(0.5)
    raise TimeoutError(f"no checkpoint of round {round_number} below {outputs}:\n{container_logs(control, env)}")


def wait_for_status(name, env, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = json.loads(run(["podman", "inspect", name], env).stdout or "[{}]")[0].get("State", {})
        if state.get("Status") in ("exited", "stopped"):
            return state
        time.sleep(1)
    raise TimeoutError(f"{name} still running after {timeout} s")


@pytest.mark.skipif(podman_unavailable() is not None, reason=str(podman_unavailable()))
def test_compose_file_runs_fedgma_locked_down_with_podman(tmp_path):
    started = time.monotonic()
    prepared = run(["bash", str(ROOT / "tests/containers/prepare-podman.sh")], dict(os.environ), timeout=1800)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    env = dict(os.environ)
    for item in prepared.stdout.strip().splitlines()[-1].removeprefix("export ").split():
        key, value = item.split("=", 1)
        env[key] = value
    # The secrets and outputs as the documented script makes them (as root: owned by uid 49999).
    copy = tmp_path / "project"
    (copy / "scripts").mkdir(parents=True)
    for name in ("make-certs.sh", "make-supernode-keys.sh", "make-deploy-secrets.sh"):
        shutil.copy(ROOT / "scripts" / name, copy / "scripts" / name)
    secrets = run(["bash", str(copy / "scripts/make-deploy-secrets.sh")], env)
    assert secrets.returncode == 0, secrets.stderr
    outputs = copy / "outputs"
    assert outputs.stat().st_uid == APP_UID
    project = f"fedgmatest{os.getpid()}"
    fleet_port = free_port()
    env.update(
        FEDGMA_SECRETS=str(copy / "deploy"), FEDGMA_OUTPUTS=str(outputs), FEDGMA_FLEET_PORT=str(fleet_port),
        FEDGMA_DOWNLOAD="false", FEDGMA_SUPERNODE_MEMORY="2g",
        FEDGMA_RUN_CONFIG="num-server-rounds=3 num-partitions=3 min-nodes=3 train-images=1500 test-images=500 "
                          "local-epochs=1",
    )
    compose = [str(PODMAN_COMPOSE), "--in-pod", "false", "-p", project, "-f", str(ROOT / "docker-compose.yml"),
               "-f", str(OVERRIDE)]
    names = {service: f"{project}_{service}_1" for service in SERVICES}
    logs, inspected, live = "", {}, {}
    try:
        # What `depends_on: service_completed_successfully` does in Docker Compose, in two steps:
        # podman 4.3 cannot start a container that requires an exited one (`register`) which shares
        # a running one's network (its dependency graph refuses it), so the nodes start after
        # `register` has finished, without --requires.
        up = run([*compose, "up", "-d", "--build", "superlink", "register"], env)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        registered = wait_for_status(names["register"], env)
        assert registered["ExitCode"] == 0, container_logs(names["register"], env)
        up = run([*compose, "up", "-d", "--no-deps", "supernode-0", "supernode-1", "supernode-2",
                  "superexec-0", "superexec-1", "superexec-2", "control"], env)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        # While the federation runs: what each running container may do, and who reaches port 8000.
        for service in ("superlink", "supernode-0", "superexec-0"):
            live[service] = in_container(names[service], env, PRIVILEGES)
        live["listeners"] = in_container(names["superlink"], env, LISTENERS)
        live["control-from-supernode"] = run(["podman", "exec", names["supernode-0"], "python", "-c", CONNECT,
                                              "superlink", "8000"], env).stdout
        live["fleet-from-supernode"] = run(["podman", "exec", names["supernode-0"], "python", "-c", CONNECT,
                                            "superlink", "9092"], env).stdout
        live["fleet-from-host"] = run([sys.executable, "-c", CONNECT, "127.0.0.1", str(fleet_port)], env).stdout
        live["ports"] = run(["podman", "port", names["superlink"]], env).stdout
        # The SuperLink dies mid-run as at its memory limit (SIGKILL; its ServerApp goes with the
        # container) once round 1 is checkpointed; it restarts with its state, and `control`, in its
        # network namespace still, resumes the run from the checkpoint.
        run_dir = wait_for_checkpoint(outputs, names["control"], env)
        killed = in_container(names["superlink"], env, KILL_SUPERLINK)
        killed_after = load_checkpoint(run_dir).round
        control_state = wait_for_status(names["control"], env, timeout=900)
        control_logs = container_logs(names["control"], env)
        register_logs = container_logs(names["register"], env)
        logs = "\n".join(container_logs(names[service], env, tail=40) for service in ("superlink", "supernode-0"))
        for service, name in names.items():
            inspected[service] = json.loads(run(["podman", "inspect", name], env).stdout)[0]
    finally:
        down = run([*compose, "down", "-v"], env)
        run(["podman", "network", "rm", "-f", f"{project}_default"], env)
        left = run(["podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={project}",
                    "--format", "{{.Names}}"], env)
        print(f"compose test: {time.monotonic() - started:.0f} s, preparation included")
    assert down.returncode == 0, down.stderr
    assert left.stdout.strip() == "", f"containers left behind: {left.stdout}"

    # The run completed after one resume, its outputs are on the host.
    assert control_state["ExitCode"] == 0, control_logs + logs
    assert "registered /run/secrets/supernode-2.pub" in register_logs
    # `register` bound each key's node id to its partition; the ServerApp refused no node for it.
    bound = re.search(r"bindings in /state/partition-bindings.json: (\{.*\})", register_logs)
    assert bound and sorted(ast.literal_eval(bound.group(1)).values()) == [0, 1, 2], register_logs
    print(control_logs)
    assert killed[1].startswith("killed"), killed
    assert inspected["superlink"]["RestartCount"] >= 1, inspected["superlink"]["RestartCount"]
    assert "attempt 2 of 4" in control_logs and "resuming after round" in control_logs, control_logs + logs
    assert control_logs.count("finished:completed") == 1, control_logs + logs
    assert run_dir.parent == outputs and 1 <= killed_after < 3, killed_after
    assert load_checkpoint(run_dir).round == 3
    (only,) = outputs.iterdir()  # on the host: survives `down`
    assert only == run_dir
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]  # each round once
    assert all(int(r["replies-used"]) == 3 for r in rows[1:])
    assert (run_dir / "final_model.pt").stat().st_size > 100_000

    # 1. The Control API listens on the SuperLink's loopback only; only the Fleet API is published.
    listening = {tuple(line.split()) for line in live["listeners"][1].split("\n") if line.strip()}
    assert {port for _, port in listening} == {"8000", "9092"}, listening
    assert [address for address, port in listening if port == "8000"] == ["127.0.0.1"], listening
    assert {address for address, port in listening if port == "9092"} <= {"0.0.0.0", "::"}, listening
    assert live["control-from-supernode"].startswith("refused"), live["control-from-supernode"]
    assert live["fleet-from-supernode"].startswith("connected")
    assert live["fleet-from-host"].startswith("connected")
    assert live["ports"].split() == ["9092/tcp", "->", f"127.0.0.1:{fleet_port}"], live["ports"]
    for service in ("register", "control"):
        assert inspected[service]["HostConfig"]["NetworkMode"] == f"container:{inspected['superlink']['Id']}"
    for i in range(3):  # each SuperExec reaches its SuperNode's Runtime API on their shared loopback
        assert inspected[f"superexec-{i}"]["HostConfig"]["NetworkMode"] == \
            f"container:{inspected[f'supernode-{i}']['Id']}"

    # 3. Keys only where needed; the CA's private key nowhere.
    expected_secrets = {
        "superlink": {"ca.crt", "server.pem", "server.key"},
        "register": {"ca.crt", "supernode-0.pub", "supernode-1.pub", "supernode-2.pub"},
        "control": {"ca.crt"},
        **{f"supernode-{i}": {"ca.crt", f"supernode-{i}", f"superexec-{i}"} for i in range(3)},
        **{f"superexec-{i}": {f"superexec-{i}"} for i in range(3)},  # the ClientApps never see a key
    }
    for service, info in inspected.items():
        sources = {Path(m["Source"]) for m in info["Mounts"] if m["Type"] == "bind"}
        from_secrets = {p.name for p in sources if (copy / "deploy") in p.parents}
        assert from_secrets == expected_secrets[service], (service, sources)
        assert not any("ca.key" in str(p) or p == copy / "deploy" / "ca" for p in sources), sources

    # 4. Least privilege, on the containers as podman runs them.
    memory = {"superlink": 4 << 30, "register": 1 << 30, "control": 1 << 30,
              **{f"{role}-{i}": 2 << 30 for i in range(3) for role in ("supernode", "superexec")}}
    # (FEDGMA_SUPERNODE_MEMORY=2g)
    for service, info in inspected.items():
        host = info["HostConfig"]
        assert info["Config"]["User"] == f"{APP_UID}:{APP_UID}", service
        assert info["EffectiveCaps"] in (None, []), (service, info["EffectiveCaps"])
        assert "no-new-privileges" in host["SecurityOpt"], (service, host["SecurityOpt"])
        assert host["ReadonlyRootfs"] is True, service
        assert host["Memory"] == memory[service], (service, host["Memory"])
        assert host["PidsLimit"] == 1024, (service, host["PidsLimit"])
        restart = host["RestartPolicy"]
        assert restart["Name"] in ("no", "") or (restart["Name"] == "on-failure"
                                                 and restart["MaximumRetryCount"] == 5), (service, restart)
    for service in ("superlink", "supernode-0", "superexec-0"):
        _, text = live[service]
        first, *writes = text.strip().splitlines()
        assert first.split() == [str(APP_UID), str(APP_UID), "0000000000000000", "1"], (service, text)
        assert writes == ["read-only /app/probe 30", "read-only /usr/probe 30"], (service, text)
