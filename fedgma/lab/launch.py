"""Drive Flower 1.39's processes and CLI: SuperLink, SuperNodes, ``flwr run``.

Used by the main job (``python -m fedgma.lab.demo``) and the end-to-end tests.
``flwr run`` exits 0 even when the ServerApp failed, so a run counts as done
only when ``flwr ls`` reports ``finished:completed``.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedgma.app.config import DATA_DIR_ENV, DOWNLOAD_ENV, OUTPUT_ROOT_ENV

BIN = Path(sys.executable).parent


_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, never the same one twice.

    Taken below the kernel's ephemeral range: a port from that range (what binding
    to port 0 returns) can be given to an outgoing connection, e.g. one of many
    SuperNodes dialling the SuperLink, before the process it was picked for binds
    it (seen with 20 SuperNodes: "address already in use").
    """
    low = _ephemeral_range()[0]
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, low) if low > 10001 else 0
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = sock.getsockname()[1]
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free TCP port found on 127.0.0.1")


@dataclass(frozen=True)
class HostSettings:
    """What a host's operator sets for the app's processes there, as environment variables:
    the output root (ServerApp) and the data directory and download permission (all)."""

    output_root: Path | None = None
    data_dir: Path | None = None
    download: bool | None = None

    def environment(self) -> dict[str, str]:
        env = {}
        if self.output_root is not None:
            env[OUTPUT_ROOT_ENV] = str(Path(self.output_root).resolve())
        if self.data_dir is not None:
            env[DATA_DIR_ENV] = str(Path(self.data_dir).resolve())
        if self.download is not None:
            env[DOWNLOAD_ENV] = "true" if self.download else "false"
        return env


def flower_env(flwr_home: Path, host: HostSettings | None = None) -> dict[str, str]:
    """Environment for Flower processes: private FLWR_HOME, no telemetry, offline, and
    the host's own settings (``host``) for the app processes they start."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PYTHONUNBUFFERED="1",
        # The SuperLink and SuperNode start flower-superexec / flwr-clientapp by name.
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update((host or HostSettings()).environment())
    return env


def write_connection(
    flwr_home: Path, name: str, address: str, root_certificates: Path | None = None
) -> None:
    """Write ``$FLWR_HOME/config.toml`` with one SuperLink connection."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{address}"']
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{root_certificates}"')
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


def format_run_config(settings: dict[str, object]) -> str:
    """``{"tau": 0.8, "variant": "ws"}`` -> ``tau=0.8 variant="ws"`` for ``--run-config``."""
    parts = []
    for key, value in settings.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = json.dumps(str(value))
        parts.append(f"{key}={text}")
    return " ".join(parts)


def wait_for_http(
    url: str, timeout: float, process: subprocess.Popen | None = None, ca_file: Path | None = None
) -> None:
    """Poll ``url`` until it answers 200; raise if ``process`` dies or time runs out.

    ``ca_file`` is the CA certificate that ``https://`` URLs are verified against.
    """
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as response:
                if response.status == 200:
                    return
        except (OSError, http.client.HTTPException):  # not up yet, or cut off while starting
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def descendants(pid: int) -> list[int]:
    """All processes below ``pid`` (Linux ``/proc``), children first found first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def processes_named(root: int | None, fragment: str) -> list[int]:
    """Processes below ``root`` (None: any on this machine) whose command line contains ``fragment``."""
    found = []
    candidates = descendants(root) if root is not None else [
        int(p.name) for p in Path("/proc").glob("[0-9]*") if int(p.name) != os.getpid()]
    for pid in candidates:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in command:
            found.append(pid)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and everything below it at once, as a crash of its machine would."""
    _signal_all([pid, *descendants(pid)], signal.SIGKILL)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop ``process`` and everything it started (see :func:`stop_all`)."""
    stop_all([process], grace)


def stop_all(processes: Sequence[subprocess.Popen], grace: float = 10.0) -> None:
    """Stop the processes and everything they started; SIGKILL what outlives ``grace``.

    The trees are collected first: Flower's SuperExec starts the simulation and
    Ray in a session of their own, which outlive a signal to the SuperLink.
    SuperNodes can hang in gRPC clean-up after SIGTERM, hence the SIGKILL. All
    trees are signalled at once and share one grace period (20 SuperNodes
    stopped one by one took minutes).
    """
    running = [p for p in processes if p.poll() is None]
    stop_trees([p.pid for p in running], grace, reap=lambda: [p.poll() for p in running])
    for p in running:
        p.wait(5)


def stop_trees(pids: Sequence[int], grace: float = 10.0, reap: Callable[[], object] | None = None) -> None:
    """SIGTERM the processes ``pids`` and everything below them, all at once; SIGKILL what
    outlives ``grace``. ``reap`` is called while waiting (to collect our own children)."""
    tree = [pid for root in pids for pid in (root, *descendants(root))]
    _signal_all(tree, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in tree):
        if reap is not None:
            reap()
        time.sleep(0.1)
    _signal_all([pid for pid in tree if _alive(pid)], signal.SIGKILL)


def start(command: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start a Flower process in its own process group, output to ``log_path``, in ``cwd``
    (default: ours), which the ServerApp and ClientApps it starts inherit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(command), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
        )


@dataclass
class RunOutcome:
    """How a run ended, as ``flwr ls`` reports it."""

    run_id: int
    status: str
    details: str
    record: dict

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


class FlowerCli:
    """Calls the ``flwr`` CLI against one connection of a private FLWR_HOME."""

    def __init__(self, env: dict[str, str], connection: str, prefix: Sequence[str] = ()) -> None:
        self.env = env
        self.connection = connection
        self.prefix = list(prefix)  # e.g. ["ip", "netns", "exec", "server"]

    def command(self, *args: str) -> list[str]:
        """A ``flwr`` command line (with the prefix)."""
        return [*self.prefix, str(BIN / "flwr"), *args]

    def _json(self, args: list[str], timeout: float = 120) -> dict:
        result = subprocess.run(
            self.command(*args, "--format", "json"),
            env=self.env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(
                f"flwr {' '.join(args)} failed ({result.returncode}): {result.stdout}{result.stderr}"
            ) from None

    def submit(
        self,
        app_dir: Path,
        run_config: dict[str, object],
        federation_config: str | None = None,
    ) -> int:
        """``flwr run``; returns the run id."""
        args = ["run", str(app_dir), self.connection, "--run-config", format_run_config(run_config)]
        if federation_config:
            args += ["--federation-config", federation_config]
        answer = self._json(args)
        if not answer.get("success"):
            raise RuntimeError(f"flwr run was refused: {answer}")
        return int(answer["run-id"])

    def status(self, run_id: int) -> dict:
        """The ``flwr ls --run-id`` record of one run."""
        answer = self._json(["ls", self.connection, "--run-id", str(run_id)])
        runs = answer.get("runs") or []
        if not runs:
            raise RuntimeError(f"flwr ls knows no run {run_id}: {answer}")
        return runs[0]

    def stop_run(self, run_id: int) -> None:
        """``flwr stop``: ask the SuperLink to end a run."""
        subprocess.run(
            self.command("stop", str(run_id), self.connection),
            env=self.env, capture_output=True, text=True, errors="replace", timeout=120,
        )

    def logs(self, run_id: int) -> str:
        """Everything the run has logged so far (``flwr log --show``)."""
        result = subprocess.run(
            self.command("log", str(run_id), self.connection, "--show"),
            env=self.env, capture_output=True, text=True, errors="replace", timeout=120,
        )
        return result.stdout + result.stderr

    def wait(
        self,
        run_id: int,
        timeout: float,
        poll: float = 5.0,
        on_poll: Callable[[], None] | None = None,
        check_now: Callable[[], bool] | None = None,
    ) -> RunOutcome:
        """Wait until the run is ``finished:*``; raise TimeoutError after ``timeout``.

        ``flwr ls`` is asked every ``poll`` seconds (each call costs about 0.8 s of
        CPU, which a 2-core machine running the clients feels), and at once
        whenever ``check_now()`` is true (e.g. the run's summary file exists);
        ``on_poll`` runs every second.
        """
        deadline = time.monotonic() + timeout
        next_status = time.monotonic()
        while True:
            if time.monotonic() >= next_status or (check_now is not None and check_now()):
                record = self.status(run_id)
                status = str(record.get("status", ""))
                if status.startswith("finished:"):
                    return RunOutcome(run_id, status, str(record.get("status-details", "")), record)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"run {run_id} still {status} after {timeout:.0f} s")
                next_status = time.monotonic() + poll
            if on_poll is not None:
                on_poll()
            time.sleep(1.0)


class SimulationRuntime:
    """Flower's local simulation runtime: a ``flower-superlink --simulation`` we own.

    It is what ``flwr run . local`` starts by itself, but on free ports and with a
    PID we stop on exit, so nothing is left running. The apps it runs start in ``cwd``
    (default: ours): relative paths of an app's own resolve there.
    """

    def __init__(self, workdir: Path, settings: HostSettings | None = None, cwd: Path | None = None) -> None:
        self.workdir = workdir
        self.cwd = cwd
        self.flwr_home = workdir / "flwr-home"
        self.port = free_port()
        self.env = flower_env(self.flwr_home, settings)
        self.process: subprocess.Popen | None = None
        self.cli = FlowerCli(self.env, "sim")

    def __enter__(self) -> SimulationRuntime:
        write_connection(self.flwr_home, "sim", f"127.0.0.1:{self.port}")
        self.process = start(
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--simulation",
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--disable-runtime-dependency-installation",
            ],
            self.env,
            self.workdir / "superlink.log",
            cwd=self.cwd,
        )
        wait_for_http(f"http://127.0.0.1:{self.port}/health", 60, self.process)
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            stop(self.process)


class LocalDeployment:
    """A real deployment on one machine: ``fedgma-superlink`` and N ``flower-supernode``.

    The SuperNodes reach the SuperLink only through its gRPC Fleet API
    (``--superlink HOST:FLEET_PORT``); ``flwr`` talks to its HTTP Control API.
    Every port is picked free; every process is stopped on exit.

    Parameters
    ----------
    workdir : Path
        Logs and FLWR_HOME go here.
    num_supernodes : int
        SuperNodes to start, with ``partition-id=i num-partitions=N``.
    host : str
        Address the SuperLink listens on and the SuperNodes dial.
    certs : Path | None
        A folder with ``ca.crt``, ``server.pem`` and ``server.key`` (as written by
        ``scripts/make-certs.sh``): TLS on every API. ``None``: ``--insecure``.
    settings : HostSettings | None
        The output root and data settings of every process (one machine, one operator).
    database : Path | None
        The SuperLink's state file (``--database``): runs, nodes and keys survive a restart
        (:meth:`restart_superlink`). ``None``: Flower's default, in memory.
    superexec_secret : Path | None
        A file with a shared secret: each SuperNode runs with ``--isolation process`` and a
        ``flower-superexec`` of its own, both given ``--superexec-auth-secret-file``, so the
        SuperNode's Runtime API hands tasks only to a caller that signs with the secret.
        ``None``: Flower's default subprocess isolation (the SuperNode starts its own
        SuperExec, and its Runtime API hands a task to any local caller).
    """

    def __init__(
        self, workdir: Path, num_supernodes: int, host: str = "127.0.0.1", certs: Path | None = None,
        settings: HostSettings | None = None, database: Path | None = None,
        superexec_secret: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.certs = certs
        self.num_supernodes = num_supernodes
        self.http_port = free_port()
        self.fleet_port = free_port()
        self.flwr_home = workdir / "flwr-home"
        self.env = flower_env(self.flwr_home, settings)
        self.cli = FlowerCli(self.env, "deployment")
        self.superlink: subprocess.Popen | None = None
        self.supernodes: list[subprocess.Popen] = []
        self.supernode_ports: list[int] = []
        self.supernode_logs: list[Path] = []
        self.database = database
        self.superexec_secret = superexec_secret
        self.executors: list[subprocess.Popen] = []

    @property
    def superlink_log(self) -> Path:
        return self.workdir / "superlink.log"

    def __enter__(self) -> LocalDeployment:
        ca = self.certs / "ca.crt" if self.certs else None
        write_connection(self.flwr_home, "deployment", f"{self.host}:{self.http_port}", ca)
        try:
            self.start_superlink()
            for i in range(self.num_supernodes):
                self.start_supernode(i)
        except BaseException:
            self.__exit__()
            raise
        return self

    def start_superlink(self, timeout: float = 60) -> subprocess.Popen:
        """Start the SuperLink (again, after :meth:`kill_superlink`: same ports, same
        ``database``) and wait until its Control API answers."""
        ca = self.certs / "ca.crt" if self.certs else None
        if self.certs:
            security = [
                "--ssl-ca-certfile", str(ca),
                "--ssl-certfile", str(self.certs / "server.pem"),
                "--ssl-keyfile", str(self.certs / "server.key"),
            ]
        else:
            security = ["--insecure"]
        state = ["--database", str(self.database)] if self.database is not None else []
        self.superlink = start(
            [
                str(BIN / "fedgma-superlink"),  # flower-superlink, Fleet messages bounded (fedgma.lab.superlink)
                *security,
                "--host", self.host,
                "--port", str(self.http_port),
                "--fleet-api-address", f"{self.host}:{self.fleet_port}",
                "--disable-runtime-dependency-installation",
                *state,
            ],
            self.env,
            self.superlink_log,
        )
        scheme = "https" if self.certs else "http"
        wait_for_http(f"{scheme}://{self.host}:{self.http_port}/health", timeout, self.superlink, ca)
        return self.superlink

    def kill_superlink(self) -> None:
        """SIGKILL the SuperLink and everything it started (its ServerApp), as an OOM kill would."""
        if self.superlink is not None and self.superlink.poll() is None:
            kill_tree(self.superlink.pid)
            self.superlink.wait(10)

    def start_supernode(self, partition_id: int) -> subprocess.Popen:
        """Start one SuperNode holding partition ``partition_id`` (and its SuperExec, when
        ``superexec_secret`` is set)."""
        port = free_port()
        log = self.workdir / f"supernode-{partition_id}.log"
        security = ["--root-certificates", str(self.certs / "ca.crt")] if self.certs else ["--insecure"]
        isolation = [] if self.superexec_secret is None else [
            "--isolation", "process", "--superexec-auth-secret-file", str(self.superexec_secret)]
        process = start(
            [
                str(BIN / "flower-supernode"),
                *security,
                "--superlink", f"{self.host}:{self.fleet_port}",
                "--node-config", f"partition-id={partition_id} num-partitions={self.num_supernodes}",
                "--port", str(port),
                *isolation,
            ],
            self.env,
            log,
        )
        self.supernodes.append(process)
        self.supernode_logs.append(log)
        self.supernode_ports.append(port)
        if self.superexec_secret is not None:
            self.executors.append(start(
                [
                    str(BIN / "flower-superexec"),
                    "--insecure",  # the SuperNode's Runtime API: plain HTTP on its loopback
                    "--runtime-api-address", f"127.0.0.1:{port}",
                    "--superexec-auth-secret-file", str(self.superexec_secret),
                ],
                self.env,
                self.workdir / f"superexec-{partition_id}.log",
            ))
        return process

    def wait_for_supernodes(self, timeout: float = 60) -> None:
        """Wait until the SuperLink has activated every SuperNode; raise if one exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process, log in zip(self.supernodes, self.supernode_logs, strict=True):
                if process.poll() is not None:
                    tail = log.read_text(errors="replace").splitlines()[-5:]
                    raise RuntimeError(f"a SuperNode exited with status {process.returncode} ({log}):\n"
                                       + "\n".join(tail))
            activated = self.superlink_log.read_text(errors="replace").count("Activated node_id")
            if activated >= self.num_supernodes:
                return
            time.sleep(0.5)
        raise TimeoutError(f"not all {self.num_supernodes} SuperNodes connected within {timeout:.0f} s")

    def __exit__(self, *exc) -> None:
        stop_all([*self.executors, *self.supernodes])
        if self.superlink is not None:
            stop(self.superlink)
