"""What the Fleet API does with unauthenticated messages: one large message, a flood of them, with
Flower's ``flower-superlink`` and ``fedgma superlink`` (``fedgma bench --parts fleet``)."""

from __future__ import annotations

import functools
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord


def send_raw(address: str, nbytes: int, timeout: float = 60.0) -> str:
    """Send one unauthenticated gRPC message of ``nbytes`` to the Fleet API; the status code's name.

    Parameters
    ----------
    address : str
        The Fleet API's ``host:port`` (loopback only).
    nbytes : int
        The message's size in bytes (zeros; calls of one size share one buffer).
    timeout : float
        Seconds before the call gives up (``DEADLINE_EXCEEDED``).
    """
    import grpc

    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)]) as channel:
        call = channel.unary_unary("/flwr.proto.Fleet/CreateNode",
                                   request_serializer=lambda data: data, response_deserializer=lambda data: data)
        try:
            call(_zeros(nbytes), timeout=timeout)
        except grpc.RpcError as err:
            return str(err.code().name)
    return "OK"


@functools.lru_cache(maxsize=2)
def _zeros(nbytes: int) -> bytes:
    return bytes(nbytes)


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    except OSError:  # gone
        pass
    return 0


def largest_honest_message(chunk_bytes: int | None = None) -> int:
    """Bytes of the largest Fleet message an honest SuperNode sends or receives for a model's arrays.

    Flower cuts each array into ``ArrayChunk`` objects of at most ``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``
    (5 MiB) and moves one object per ``PushObject`` / ``PullObject`` call. This serializes a record
    with an array of three chunks and returns the largest of those calls' messages, with the largest
    node and run ids protobuf can carry.

    Parameters
    ----------
    chunk_bytes : int, optional
        The chunk size (default: flwr's ``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``).
    """
    from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
    from flwr.proto.message_pb2 import PullObjectResponse, PushObjectRequest
    from flwr.proto.node_pb2 import Node
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    chunk = chunk_bytes or FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
    record = ArrayRecord({"w": Array(np.ones(3 * chunk // 4 + 1, dtype=np.float32))})  # 3 chunks, the last short
    largest = 0
    for object_id, obj in get_all_nested_objects(record).items():
        content = obj.deflate()
        push = PushObjectRequest(node=Node(node_id=2**64 - 1), run_id=2**64 - 1, object_id=object_id,
                                 object_content=content)
        pull = PullObjectResponse(object_found=True, object_available=True, object_content=content)
        largest = max(largest, push.ByteSize(), pull.ByteSize())
    return largest


def _superlink(launcher: str, home: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """Start an insecure ``launcher`` on loopback; (its process, its Fleet port) once it answers."""
    from fedgma.deployment.flower import flower_env
    from fedgma.deployment.processes import free_port, launch_command, start, wait_for_http

    fleet, http = free_port(), free_port()
    process = start([*launch_command(launcher), "--insecure", "--host", "127.0.0.1", "--port", str(http),
                     "--fleet-api-address", f"127.0.0.1:{fleet}", "--disable-runtime-dependency-installation"],
                    {**flower_env(home), **env}, home.with_suffix(".log"))
    try:
        wait_for_http(f"http://127.0.0.1:{http}/health", 60, process)  # Fleet starts before HTTP
    except BaseException:
        from fedgma.deployment.processes import stop

        stop(process)
        raise
    return process, fleet


def fleet_messages(sizes_mb: tuple[int, ...] = (10, 100, 300)) -> list[str]:
    """One unauthenticated message of each size to the Fleet API of flower-superlink and of
    fedgma superlink: the answer, the SuperLink's peak extra memory, and what it keeps."""
    import tempfile
    import threading

    from fedgma.deployment.processes import stop

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for launcher in ("flower-superlink", "fedgma superlink"):
            process, fleet = _superlink(launcher, Path(tmp) / launcher, {})
            try:
                time.sleep(2.0)  # the SuperExec it starts settles
                for size in sizes_mb:
                    base = peak = _rss(process.pid)
                    done = threading.Event()

                    def sample(done: threading.Event = done, pid: int = process.pid) -> None:
                        nonlocal peak
                        while not done.is_set():
                            peak = max(peak, _rss(pid))
                            time.sleep(0.01)

                    sampler = threading.Thread(target=sample)
                    sampler.start()
                    answer = send_raw(f"127.0.0.1:{fleet}", size << 20)
                    time.sleep(1.0)
                    done.set()
                    sampler.join()
                    kept = _rss(process.pid) - base
                    lines.append(f"| `{launcher}` | {size} MB | {answer} | {(peak - base) / 2**20:.0f} MiB "
                                 f"| {kept / 2**20:.0f} MiB |")
            finally:
                stop(process)
    return lines


@dataclass(frozen=True)
class Flood:
    """What a flood of concurrent unauthenticated Fleet messages did to a SuperLink."""

    answers: dict[str, int]  # status code name -> calls
    base_bytes: int  # resident set of the SuperLink's process tree before the flood
    peak_bytes: int  # its peak during the flood
    seconds: float  # from the first call to the last answer


def flood(address: str, pids: list[int], count: int, nbytes: int, timeout: float = 30.0) -> Flood:
    """Send ``count`` unauthenticated messages of ``nbytes`` at once to the Fleet API at ``address``
    (each on its own connection, opened first, then all released together; each call at most
    ``timeout`` s), sampling the summed resident set (VmRSS) of ``pids`` every 10 ms."""
    import collections
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    base = peak = sum(_rss(pid) for pid in pids)
    done, ready = threading.Event(), threading.Barrier(count)

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, sum(_rss(pid) for pid in pids))

    def send(_: int) -> str:
        with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)]) as channel:
            grpc.channel_ready_future(channel).result(timeout=timeout)
            call = channel.unary_unary("/flwr.proto.Fleet/CreateNode", request_serializer=lambda data: data,
                                       response_deserializer=lambda data: data)
            ready.wait(timeout)
            try:
                call(_zeros(nbytes), timeout=timeout)
            except grpc.RpcError as err:
                return str(err.code().name)
        return "OK"

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            answers = collections.Counter(pool.map(send, range(count)))
        seconds = time.perf_counter() - started
        time.sleep(0.5)  # what the SuperLink still does after answering
    finally:
        done.set()
        sampler.join()
    return Flood(dict(answers), base, peak, seconds)


FLOOD_SETUPS: tuple[tuple[str, dict[str, str], int], ...] = (  # launcher, its environment, messages
    ("flower-superlink", {}, 100),
    ("fedgma superlink", {"FEDGMA_FLEET_MAX_MESSAGE_MB": "32", "FEDGMA_FLEET_MAX_CONCURRENT_CALLS": "1000"}, 60),
    ("fedgma superlink", {"FEDGMA_FLEET_MAX_CONCURRENT_CALLS": "1000"}, 100),
    ("fedgma superlink", {}, 100),
    ("fedgma superlink", {"FEDGMA_FLEET_MAX_CONCURRENT_CALLS": "16"}, 100),
)


def fleet_flood(setups: tuple[tuple[str, dict[str, str], int], ...] = FLOOD_SETUPS) -> list[str]:
    """Floods of concurrent unauthenticated messages, each 64 KiB under the SuperLink's message bound
    (for plain flower-superlink: under fedgma superlink's default), one SuperLink per setup (launcher,
    environment, number of messages): the answers and the SuperLink tree's peak extra resident memory.
    """
    import tempfile

    from fedgma.deployment.processes import descendants, stop
    from fedgma.deployment.superlink import call_limit, message_limit

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (launcher, env, count) in enumerate(setups):
            bounded = launcher == "fedgma superlink"
            limit = message_limit(env if bounded else {})
            nbytes = limit - (64 << 10)
            process, fleet = _superlink(launcher, Path(tmp) / f"superlink-{index}", env)
            try:
                time.sleep(2.0)  # the SuperExec it starts settles
                result = flood(f"127.0.0.1:{fleet}", [process.pid, *descendants(process.pid)], count, nbytes)
            finally:
                stop(process)
            bounds = f"{limit >> 20} MiB, {call_limit(env)} calls" if bounded else "2 GiB, 1000 calls (Flower's)"
            answers = ", ".join(f"{code} {n}" for code, n in sorted(result.answers.items()))
            lines.append(f"| `{launcher}` | {bounds} | {count} x {nbytes / 2**20:.2f} MiB | {answers} "
                         f"| {result.seconds:.1f} s | {result.base_bytes / 2**20:.0f} MiB "
                         f"| {(result.peak_bytes - result.base_bytes) / 2**20:.0f} MiB |")
            print(lines[-1], flush=True)
    return lines

