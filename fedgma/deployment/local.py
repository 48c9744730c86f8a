"""A real deployment on one machine: the hardened SuperLink (``fedgma superlink``) and N
``flower-supernode`` processes, for the end-to-end tests and the benchmarks."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from .flower import FlowerCli, HostSettings, flower_env, write_connection
from .processes import BIN, SUPERLINK, free_port, kill_tree, start, stop, stop_all, wait_for_http


class LocalDeployment:
    """A real deployment on one machine: ``fedgma superlink`` and N ``flower-supernode``.

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
        self.superlink: subprocess.Popen[bytes] | None = None
        self.supernodes: list[subprocess.Popen[bytes]] = []
        self.supernode_ports: list[int] = []
        self.supernode_logs: list[Path] = []
        self.database = database
        self.superexec_secret = superexec_secret
        self.executors: list[subprocess.Popen[bytes]] = []

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

    def start_superlink(self, timeout: float = 60) -> subprocess.Popen[bytes]:
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
                *SUPERLINK,  # flower-superlink, Fleet messages bounded (fedgma.deployment.superlink)
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

    def start_supernode(self, partition_id: int) -> subprocess.Popen[bytes]:
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

    def __exit__(self, *exc: object) -> None:
        stop_all([*self.executors, *self.supernodes])
        if self.superlink is not None:
            stop(self.superlink)
