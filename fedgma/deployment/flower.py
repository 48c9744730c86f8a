"""Drive Flower 1.39's CLI and its simulation runtime: ``flwr run``, ``flwr ls``, a private
FLWR_HOME, the host's settings for the app's processes.

``flwr run`` exits 0 even when the ServerApp failed, so a run counts as done only when
``flwr ls`` reports ``finished:completed``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgma.app.config import DATA_DIR_ENV, DEVICE_ENV, DOWNLOAD_ENV, OUTPUT_ROOT_ENV

from .processes import BIN, free_port, start, stop, wait_for_http


@dataclass(frozen=True)
class HostSettings:
    """What a host's operator sets for the app's processes there, as environment variables:
    the output root (ServerApp), the data directory and download permission (all) and the
    device the ClientApps train on (``auto``, ``cpu``, ``cuda`` or ``cuda:N``)."""

    output_root: Path | None = None
    data_dir: Path | None = None
    download: bool | None = None
    device: str | None = None

    def environment(self) -> dict[str, str]:
        env = {}
        if self.device is not None:
            env[DEVICE_ENV] = self.device
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


RAY_ADDRESS_ENV = "RAY_ADDRESS"  # read by ray.init() in the simulation process


@dataclass(frozen=True)
class SimulationResources:
    """Which Ray runs a simulation's ClientApps, and what each one gets from it.

    Flower 1.39's ``--federation-config`` takes the client resources and a private Ray's
    CPUs and GPUs, but no cluster address (``init-args-address`` is refused as an unknown
    field); the simulation process calls ``ray.init()``, which reads ``RAY_ADDRESS``. So the
    address goes into the SuperLink's environment and the rest into the federation config.

    Attributes
    ----------
    ray_address : str
        ``local``: a private Ray for each run, started and stopped with it (Flower's default
        when no cluster is running here); ``auto``: the cluster started on this machine with
        ``ray start``; ``HOST:PORT``: the cluster whose head is there (``ray start --head``).
    client_cpus : int
        CPUs each ClientApp reserves (Flower's default is 2).
    client_gpus : float
        GPUs, or a fraction of one, each ClientApp reserves; 0: none (Ray then hides the GPUs
        from it, so ``device = auto`` trains on the CPU).
    ray_cpus : int | None
        CPUs of a private Ray (``local`` only); None: every core of the machine.
    """

    ray_address: str = "local"
    client_cpus: int = 1
    client_gpus: float = 0.0
    ray_cpus: int | None = None

    def __post_init__(self) -> None:
        address = self.ray_address
        host, _, port = address.removeprefix("ray://").rpartition(":")
        if address not in ("local", "auto") and (
                not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in address)):
            raise ValueError(f"Ray address must be local, auto or HOST:PORT, got {address!r}")
        if isinstance(self.client_cpus, bool) or not isinstance(self.client_cpus, int) or self.client_cpus < 1:
            raise ValueError(f"CPUs per client must be an integer >= 1, got {self.client_cpus!r}")
        if not 0.0 <= float(self.client_gpus) <= 64:
            raise ValueError(f"GPUs per client must be between 0 and 64, got {self.client_gpus!r}")
        if self.ray_cpus is not None and (self.ray_cpus < 1 or self.joins_cluster):
            raise ValueError("a private Ray's CPUs must be >= 1, and only a private (local) Ray takes them; "
                             f"got {self.ray_cpus!r} with Ray address {address!r}")

    @property
    def joins_cluster(self) -> bool:
        """True unless each run starts its own Ray."""
        return self.ray_address != "local"

    def environment(self) -> dict[str, str]:
        return {RAY_ADDRESS_ENV: self.ray_address}

    def federation_config(self, num_supernodes: int) -> str:
        """The ``--federation-config`` of a run with ``num_supernodes`` simulated nodes."""
        parts = [f"num-supernodes={num_supernodes}", f"client-resources-num-cpus={self.client_cpus}"]
        if self.client_gpus:
            parts.append(f"client-resources-num-gpus={float(self.client_gpus)!r}")
        if self.ray_cpus is not None:
            parts.append(f"init-args-num-cpus={self.ray_cpus}")
        return " ".join(parts)


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


@dataclass
class RunStatus:
    """How a run ended, as ``flwr ls`` reports it."""

    run_id: int
    status: str
    details: str
    record: dict[str, Any]

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


# Status polls of a run (``flwr ls``) that may fail in a row before :meth:`FlowerCli.wait` gives up.
STATUS_TRIES = 5


class FlowerCli:
    """Calls the ``flwr`` CLI against one connection of a private FLWR_HOME."""

    def __init__(self, env: dict[str, str], connection: str, prefix: Sequence[str] = ()) -> None:
        self.env = env
        self.connection = connection
        self.prefix = list(prefix)  # e.g. ["ip", "netns", "exec", "server"]

    def command(self, *args: str) -> list[str]:
        """A ``flwr`` command line (with the prefix)."""
        return [*self.prefix, str(BIN / "flwr"), *args]

    def _json(self, args: list[str], timeout: float = 120) -> dict[str, Any]:
        result = subprocess.run(
            self.command(*args, "--format", "json"),
            env=self.env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
        try:
            answer: dict[str, Any] = json.loads(result.stdout)
            return answer
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

    def status(self, run_id: int) -> dict[str, Any]:
        """The ``flwr ls --run-id`` record of one run."""
        answer = self._json(["ls", self.connection, "--run-id", str(run_id)])
        runs = answer.get("runs") or []
        if not runs:
            raise RuntimeError(f"flwr ls knows no run {run_id}: {answer}")
        record: dict[str, Any] = runs[0]
        return record

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
    ) -> RunStatus:
        """Wait until the run is ``finished:*``; raise TimeoutError after ``timeout``.

        ``flwr ls`` is asked every ``poll`` seconds (each call costs about 0.8 s of
        CPU, which a 2-core machine running the clients feels), and at once
        whenever ``check_now()`` is true (e.g. the run's summary file exists);
        ``on_poll`` runs every second. A poll that fails (``flwr ls`` past its timeout on a
        busy machine, or an unreadable answer) is said on stderr and asked again at the next
        poll; :data:`STATUS_TRIES` failures in a row raise RuntimeError.
        """
        deadline = time.monotonic() + timeout
        next_status = time.monotonic()
        failed: list[str] = []  # the status polls failed in a row
        while True:
            if time.monotonic() >= next_status or (check_now is not None and check_now() and not failed):
                try:
                    record: dict[str, Any] | None = self.status(run_id)
                    failed.clear()
                except (subprocess.TimeoutExpired, RuntimeError) as err:
                    # A machine busy enough can keep `flwr ls` past its timeout; the run goes on.
                    failed.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
                    if len(failed) >= STATUS_TRIES:
                        raise RuntimeError(f"run {run_id}: its status could not be read {len(failed)} times in "
                                           f"a row; the last: {failed[-1]}") from err
                    print(f"run {run_id}: status not read ({failed[-1]}); asking again in {poll:.0f} s",
                          file=sys.stderr, flush=True)
                    record = None
                status = "" if record is None else str(record.get("status", ""))
                if record is not None and status.startswith("finished:"):
                    return RunStatus(run_id, status, str(record.get("status-details", "")), record)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"run {run_id} still {status or 'unread'} after {timeout:.0f} s")
                next_status = time.monotonic() + poll
            if on_poll is not None:
                on_poll()
            time.sleep(1.0)


class SimulationRuntime:
    """Flower's local simulation runtime: a ``flower-superlink --simulation`` we own.

    It is what ``flwr run . local`` starts by itself, but on free ports and with a
    PID we stop on exit, so nothing is left running. The apps it runs start in ``cwd``
    (default: ours): relative paths of an app's own resolve there. Its runs' ClientApps run
    on the Ray that ``resources`` names (default: a private one per run).
    """

    def __init__(self, workdir: Path, settings: HostSettings | None = None, cwd: Path | None = None,
                 resources: SimulationResources | None = None) -> None:
        self.workdir = workdir
        self.cwd = cwd
        self.flwr_home = workdir / "flwr-home"
        self.port = free_port()
        self.resources = resources or SimulationResources()
        self.env = {**flower_env(self.flwr_home, settings), **self.resources.environment()}
        self.process: subprocess.Popen[bytes] | None = None
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

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop(self.process)
