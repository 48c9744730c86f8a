"""Client hosts with Flower 1.39's process isolation: each SuperNode runs with ``--isolation process``
and a ``flower-superexec`` of its own, both given the same ``--superexec-auth-secret-file``. A
1-round FedGMA run completes, and a local process without the secret that asks a SuperNode's
Runtime API for a task (``AcquireTask``, with Flower's own Runtime client) is refused with 401 on
every call made while the run's tasks were pending; the same call signed with the secret is
answered. What the secret does not hide is checked too: the task token is still on the command
line of each ``flwr-clientapp`` process (docs/client-hosts.md)."""

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
from flwr.supercore.runtime import RuntimeHttpClient
from run_settings import ROOT

from fedgma.deployment.local import LocalDeployment
from fedgma.deployment.processes import processes_named

pytestmark = pytest.mark.e2e

ACQUIRE = "/flwr.proto.Runtime/AcquireTask"


def runtime_client(port: int, secret: bytes | None = None) -> RuntimeHttpClient:
    """Flower's own client of a SuperNode's Runtime API (plain HTTP on loopback), as
    ``flower-superexec`` builds it; it signs ``AcquireTask`` only when given the secret."""
    interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if secret is not None:
        interceptors.append(SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={ACQUIRE}))
    return RuntimeHttpClient.from_server_address(server_address=f"127.0.0.1:{port}", insecure=True,
                                                 root_certificates=None, interceptors=interceptors)


def acquire(client: RuntimeHttpClient) -> str:
    """One ``AcquireTask`` for a ClientApp task: "task", "no task", or the error."""
    try:
        answer = client.AcquireTask(AcquireTaskRequest(supported_task_types=["flwr-clientapp"]))
    except Exception as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0].split(' for url')[0]}"
    return "task" if answer.HasField("task") and answer.token else "no task"


class Intruder(threading.Thread):
    """Asks every SuperNode for a task, without the secret, until stopped."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__(daemon=True)
        self.clients = [runtime_client(port) for port in ports]
        self.answers: Counter[str] = Counter()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for client in self.clients:
                self.answers[acquire(client)] += 1
            time.sleep(0.05)


def token_command_lines() -> list[str]:
    """Command lines of this machine's ``flwr-clientapp`` processes that carry ``--token``."""
    found = []
    for pid in processes_named(None, "flwr-clientapp"):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--token" in command:
            found.append(b" ".join(command).decode(errors="replace"))
    return found


def test_process_isolation_with_a_secret_refuses_tasks_to_other_local_callers(tmp_path, host_settings):
    secret = tmp_path / "superexec.secret"
    secret.write_bytes(b"a shared secret for this test only")  # raw bytes, as Flower reads them
    secret.chmod(0o600)
    with LocalDeployment(tmp_path / "deployment", num_supernodes=2, settings=host_settings,
                         superexec_secret=secret) as deployment:
        deployment.wait_for_supernodes()
        ports = deployment.supernode_ports
        signed = acquire(runtime_client(ports[0], secret.read_bytes()))  # idle: answered, nothing to take
        intruder = Intruder(ports)
        intruder.start()
        run_id = deployment.cli.submit(ROOT, {"num-server-rounds": 1, "train-images": 2000,
                                              "test-images": 1000, "num-partitions": 2,
                                              "run-name": "isolated"})
        tokens: list[str] = []
        outcome = deployment.cli.wait(run_id, timeout=300, on_poll=lambda: tokens.extend(token_command_lines()))
        intruder.halt.set()
        intruder.join(30)
        node_logs = [log.read_text(errors="replace") for log in deployment.supernode_logs]
        executor_logs = [(deployment.workdir / f"superexec-{i}.log").read_text(errors="replace")
                         for i in range(2)]

    assert outcome.completed, f"{outcome.status}: {outcome.details}"
    assert (host_settings.output_root / "isolated" / "final_model.pt").is_file()
    # Each ClientApp was started by the SuperNode's own SuperExec (it signed AcquireTask).
    assert all("Start `flwr-clientapp` process" in text for text in executor_logs), executor_logs
    assert signed == "no task", signed
    print("unsigned AcquireTask answers during the run:", dict(intruder.answers))
    (answer,) = intruder.answers  # one kind of answer, on both nodes, all run long
    assert "401 Unauthorized" in answer and intruder.answers[answer] > 20, intruder.answers
    assert all("SuperExec authentication failed for /flwr.proto.Runtime/AcquireTask" in text for text in node_logs)
    # Not hidden by the secret: the task token is in each ClientApp's argv (readable in /proc).
    assert tokens and all("--token " in line for line in tokens), tokens
