"""Processes on this machine: free ports, starting and stopping process trees, waiting for an
HTTP endpoint. What the launchers of Flower's processes (:mod:`fedgma.deployment.flower`,
:mod:`fedgma.deployment.local`) and the tests build on.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

BIN = Path(sys.executable).parent
# The hardened SuperLink: ``fedgma superlink`` (fedgma.deployment.superlink), as ``python -m fedgma``
# of this interpreter (the code it imports, not whichever console script is installed).
SUPERLINK = (sys.executable, "-m", "fedgma", "superlink")


def launch_command(launcher: str) -> list[str]:
    """The command line of a SuperLink ``launcher``: ``fedgma superlink`` or a Flower executable
    of this installation (``flower-superlink``)."""
    return list(SUPERLINK) if launcher == "fedgma superlink" else [str(BIN / launcher)]


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
            port = int(sock.getsockname()[1])
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free TCP port found on 127.0.0.1")


def wait_for_http(
    url: str, timeout: float, process: subprocess.Popen[bytes] | None = None, ca_file: Path | None = None
) -> None:
    """Poll ``url`` until it answers 200; raise if ``process`` dies or time runs out.

    ``ca_file`` is the CA certificate that ``https://`` URLs are verified against.
    """
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            name = process.args[0] if isinstance(process.args, (list, tuple)) else process.args
            raise RuntimeError(f"{name!s} exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as response:
                if response.status == 200:
                    return
        except (OSError, http.client.HTTPException):  # not up yet, or cut off while starting
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def descendants(*pids: int) -> list[int]:
    """All processes below ``pids`` (Linux ``/proc``, read once), children first found first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        if (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], list(pids)
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
        if fragment in command_line(pid):
            found.append(pid)
    return found


def command_line(pid: int) -> str:
    """The command line of process ``pid``, arguments joined by spaces; "" once it has ended.
    Between fork and exec a process still shows its parent's."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and everything below it at once, as a crash of its machine would."""
    _signal_all([pid, *descendants(pid)], signal.SIGKILL)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (state, parent pid, ...); None once it has ended."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def parent(pid: int) -> int | None:
    """The parent's pid; None once ``pid`` has ended."""
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its parent counts as ended)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop ``process`` and everything it started (see :func:`stop_all`)."""
    stop_all([process], grace)


def stop_all(processes: Sequence[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """Stop the processes and everything they started; SIGKILL what outlives ``grace``.

    The trees are collected first: Flower's SuperExec starts the simulation and
    Ray in a session of their own, which outlive a signal to the SuperLink.
    SuperNodes can hang in gRPC clean-up after SIGTERM, hence the SIGKILL. All
    trees are signalled at once and share one grace period (20 SuperNodes
    stopped one by one took minutes).
    """
    running = [p for p in processes if p.poll() is None]
    stop_trees([p.pid for p in running], grace, reap=lambda: [p.poll() for p in running],
               tags=[_TAGS[p] for p in processes if p in _TAGS])  # ended ones' too: their orphans
    for p in running:
        try:
            p.wait(30)  # a killed process on a loaded machine can take seconds to go
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"process {p.pid} ({str(p.args)[:100]}) still runs {grace + 30:.0f} s "
                               "after SIGTERM and SIGKILL") from err


def stop_trees(pids: Sequence[int], grace: float = 10.0, reap: Callable[[], object] | None = None,
               tags: Sequence[str] = ()) -> None:
    """SIGTERM the processes ``pids``, everything below them and every process carrying one of
    ``tags`` (what :func:`start` started, wherever it went), all at once; SIGKILL what outlives
    ``grace``. ``reap`` is called while waiting (to collect our own children).

    The tags catch what a process starts while it is being stopped: a simulation Flower's
    SuperExec launched just before its SIGTERM outlived it, orphaned, still holding its run."""
    def members() -> set[int]:  # read afresh each time: polled every 0.1 s, with up to 20 roots
        return {*pids, *descendants(*pids), *tagged(tags)}

    signalled: set[int] = set()
    deadline = time.monotonic() + grace
    while True:
        tree = {pid for pid in members() if alive(pid)}
        _signal_all(sorted(tree - signalled), signal.SIGTERM)
        signalled |= tree
        if not tree or time.monotonic() >= deadline:
            break
        if reap is not None:
            reap()
        time.sleep(0.1)
    # Until nothing is left: what SIGKILL leaves a moment to fork before it lands is found next time.
    for _ in range(50):
        tree = {pid for pid in members() if alive(pid)}
        if not tree:
            return
        _signal_all(sorted(tree), signal.SIGKILL)
        if reap is not None:
            reap()
        time.sleep(0.1)


# Each process :func:`start` started: the value of TREE_TAG in its environment, which everything
# it starts inherits (Flower passes its environment on to the apps, Ray to its workers).
TREE_TAG = "FEDGMA_PROCESS_TREE"
_TAGS: weakref.WeakKeyDictionary[subprocess.Popen[bytes], str] = weakref.WeakKeyDictionary()


def tagged(tags: Sequence[str]) -> list[int]:
    """The processes on this machine (of ours: others' environments cannot be read) whose
    environment holds one of ``tags`` as :data:`TREE_TAG`."""
    wanted = {f"{TREE_TAG}={tag}".encode() for tag in tags}
    if not wanted:
        return []
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted.intersection(environment):
            found.append(int(entry.name))
    return found


def start(
    command: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a Flower process in its own process group, output to ``log_path``, in ``cwd``
    (default: ours), which the ServerApp and ClientApps it starts inherit. It and what it
    starts carry a tag of their own (:data:`TREE_TAG`), by which :func:`stop_all` finds them."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{time.monotonic_ns()}-{random.getrandbits(32):08x}"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(command), env={**env, TREE_TAG: tag}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=cwd
        )
    _TAGS[process] = tag
    return process
