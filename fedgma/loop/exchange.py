"""Send one round's messages and collect the replies, polling the grid at a short interval.

Flower's ``Grid.send_and_receive`` does the same, but in deployment (``HttpGrid``,
Flower 1.39) it sleeps 3 s between pulls: a round whose last reply lands just after
a pull waits up to 3 s more for nothing, twice when clients also evaluate.
:func:`exchange` pushes the messages and pulls every ``poll_interval`` seconds instead,
with Flower's semantics otherwise: replies come back in the order they were pulled,
error replies included; the wait ends when every pushed message has its reply or at
``timeout``, whichever is first; a message without a reply by then is simply
missing from the result.

One more wait hides inside a pull. The SuperLink hands out a reply as soon as the node
has announced it, while the node may still be uploading its arrays; Flower's grid then
retries each missing array after 1 s, doubling (``pull_objects``, ``initial_backoff``).
Polling every 3 s rarely catches a reply in that window; polling every 0.1 s catches
most (measured: about 1 s added to the first training reply of a round). So while it
pulls, :func:`exchange` has the grid retry after ``poll_interval`` instead, doubling
as before (:func:`_bounded_pulls`, for grids that pull objects this way: ``HttpGrid``,
Flower 1.39 to 1.42).

That wait is also where one node could hold a round: Flower pulls a reply's objects for
up to 2 hours, so a node that announces its reply and uploads it slowly kept a round
with a 30 s timeout going for 447.7 s. Here every pull ends at the round's deadline (a
reply not uploaded by then becomes an error reply, and its node is in
:meth:`Exchange.unavailable`), and a reply larger than a :class:`ReplyLimits` allows
is refused before the server has pulled more of it than that. Since the SuperLink hands
out each reply once and Flower's grid inflates a pull's replies one after the other, the
replies announced while a stalled upload held a pull are collected by one last pull at
the deadline: a stalled node costs the others time, never their replies.

``poll_interval=None`` leaves the wait to the grid's own ``send_and_receive``.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore import log

__all__ = ["DEFAULT_POLL_INTERVAL", "Exchange", "ReplyLimits", "exchange"]

# Seconds between pulls. Each pull costs the SuperLink a request (measured: polling at 0.1 s
# took about 6 % of one core, at 0.25 s about 3 %); a reply waits half an interval on average.
DEFAULT_POLL_INTERVAL = 0.2


@dataclass
class Exchange:
    """The replies to one batch of messages, and how long they took.

    Attributes
    ----------
    replies : list[Message]
        In the order they were pulled (error replies included).
    wait_seconds : float
        From the push to the last reply (or to the timeout).
    last_reply_lag : float | None
        Seconds from the creation of the newest reply (its ``created_at``, stamped by
        the node that made it) to the moment the server held it: the node's upload and
        the server's polling. Clocks of other machines make this as good as their
        synchronisation; None without replies.
    pulls : int
        Pull requests made (0 when the grid's ``send_and_receive`` did the waiting).
    destinations : dict[str, int]
        The node each pushed message went to, by message id (an error reply made by the
        server's own grid, e.g. for a reply whose upload never finished, names the server
        as its source; its ``reply_to_message_id`` leads here).
    unanswered : list[int]
        Nodes whose message had no reply at all by the timeout.
    """

    replies: list[Message]
    wait_seconds: float
    last_reply_lag: float | None
    pulls: int
    destinations: dict[str, int] = field(default_factory=dict)
    unanswered: list[int] = field(default_factory=list)

    def node_of(self, reply: Message) -> int:
        """The node a reply answers for: the destination of the message it replies to."""
        return self.destinations.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)

    def unavailable(self) -> list[Message]:
        """Replies the server could not pull whole: not uploaded by the deadline, or beyond
        the :class:`ReplyLimits` (Flower's ``MESSAGE_UNAVAILABLE`` error replies)."""
        return [reply for reply in self.replies
                if reply.has_error() and reply.error.code == ErrorCode.MESSAGE_UNAVAILABLE]


@dataclass(frozen=True)
class ReplyLimits:
    """Bounds on one pulled reply, checked while its objects are pulled, before it is
    inflated (a reply's arrays travel as many objects, each under the Fleet API's bound).

    Attributes
    ----------
    max_objects : Optional[int]
        A reply of more objects is refused before any is pulled.
    max_bytes : Optional[int]
        A reply whose objects add up to more bytes is refused as soon as they do.
    """

    max_objects: int | None = None
    max_bytes: int | None = None

    @classmethod
    def for_model(cls, arrays: Iterable[np.ndarray]) -> ReplyLimits:
        """Limits that admit a reply of these arrays with room to spare: twice the model's
        bytes plus 1 MiB (metrics, configs, the records' headers), and twice its objects
        (each array in chunks of at most ``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE`` bytes) plus
        64 (the message, its records and their items)."""
        chunk = _array_chunk_size()
        nbytes = objects = 0
        for array in arrays:
            nbytes += array.nbytes
            objects += 1 + max(-(-array.nbytes // chunk), 1)
        return cls(max_objects=2 * objects + 64, max_bytes=2 * nbytes + (1 << 20))


def _array_chunk_size() -> int:
    try:
        from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
    except ImportError:  # pragma: no cover - a Flower without chunked arrays
        return 5 << 20
    return int(FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE)


# Longest wait between two tries for an object a node is still uploading: Flower's 10 s
# cap would let a pull overrun the round's deadline by that much.
MAX_OBJECT_RETRY_DELAY = 1.0


@contextmanager
def _bounded_pulls(grid: Grid, retry_after: float, deadline: float, limits: ReplyLimits) -> Iterator[None]:
    """While inside, the grid's module pulls a reply's objects (``pull_objects``, as
    ``HttpGrid`` does in Flower 1.39 to 1.42) retrying an object still being uploaded
    after ``retry_after`` seconds (then doubling, up to :data:`MAX_OBJECT_RETRY_DELAY`)
    instead of Flower's 1 s, for no longer than the round has left (Flower's default:
    2 hours), and refusing a reply beyond ``limits``. A reply refused or not uploaded by
    the deadline becomes an error reply (Flower's ``MESSAGE_UNAVAILABLE``), so it cannot
    hold the round. Grids without ``pull_objects`` are left as they are."""
    # The module of the grid's class that pulls objects (a subclass of HttpGrid inherits its pulls).
    modules = [sys.modules.get(cls.__module__) for cls in type(grid).__mro__]
    module = next((m for m in modules if callable(getattr(m, "pull_objects", None))), None)
    pull_objects = getattr(module, "pull_objects", None)
    pull_error = getattr(module, "ObjectPullError", None)
    if module is None or pull_objects is None or pull_error is None:
        yield
        return

    def bounded(object_ids: list[str], pull_object_fn: Callable[[str], bytes], **options: Any) -> dict[str, bytes]:
        if limits.max_objects is not None and len(object_ids) > limits.max_objects:
            raise pull_error(object_ids[0], f"the reply has {len(object_ids)} objects, more than the "
                                            f"{limits.max_objects} a reply of this model may have")
        pulled = [0]
        lock = threading.Lock()

        def counted(object_id: str) -> bytes:
            content = pull_object_fn(object_id)
            with lock:
                pulled[0] += len(content)
                total = pulled[0]
            if limits.max_bytes is not None and total > limits.max_bytes:
                raise pull_error(object_id, f"the reply is larger than the {limits.max_bytes} bytes a reply "
                                            "of this model may have")
            return content

        options.update(initial_backoff=retry_after, backoff_cap=max(retry_after, MAX_OBJECT_RETRY_DELAY),
                       max_time=max(deadline - time.monotonic(), 0.0))
        contents: dict[str, bytes] = pull_objects(object_ids, counted, **options)
        return contents

    # Flower's module is patched for the round's pulls only (it has no hook for them).
    module.pull_objects = bounded  # type: ignore[attr-defined]
    try:
        yield
    finally:
        module.pull_objects = pull_objects  # type: ignore[attr-defined]


def _last_reply_lag(arrivals: list[tuple[Message, float]]) -> float | None:
    """Seconds from the newest reply's creation to its arrival (wall clock); None without one."""
    stamped = [(reply.metadata.created_at, at) for reply, at in arrivals if reply.metadata.created_at > 0]
    if not stamped:
        return None
    created, arrived = max(stamped)
    return max(arrived - created, 0.0)


def exchange(grid: Grid, messages: Iterable[Message], timeout: float,
             poll_interval: float | None = DEFAULT_POLL_INTERVAL, limits: ReplyLimits | None = None) -> Exchange:
    """Push ``messages`` and pull their replies every ``poll_interval`` seconds until all
    are in or ``timeout`` seconds have passed (see the module docstring); each reply's
    objects are pulled within that time and within ``limits``."""
    messages = list(messages)
    started = time.monotonic()
    if poll_interval is None:
        replies = list(grid.send_and_receive(messages=messages, timeout=timeout))
        arrived = time.time()
        return Exchange(replies, time.monotonic() - started, _last_reply_lag([(r, arrived) for r in replies]), 0)
    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be > 0 seconds (or None), got {poll_interval!r}")
    destinations = {message_id: message.metadata.dst_node_id
                    for message_id, message in zip(grid.push_messages(messages), messages, strict=False) if message_id}
    pending = set(destinations)
    if len(pending) < len(messages):
        log(WARNING, "%s of %s messages could not be pushed to the SuperLink", len(messages) - len(pending),
            len(messages))
    deadline = started + timeout
    arrivals: list[tuple[Message, float]] = []
    pulls = 0
    last_pull = False
    while pending:
        with _bounded_pulls(grid, poll_interval, deadline, limits or ReplyLimits()):
            pulled = list(grid.pull_messages(sorted(pending)))
        pulls += 1
        arrived = time.time()
        for reply in pulled:
            if reply.metadata.reply_to_message_id in pending:  # else a second reply to one message: skipped
                pending.discard(reply.metadata.reply_to_message_id)
                arrivals.append((reply, arrived))
        remaining = deadline - time.monotonic()
        if not pending or last_pull:
            break
        if remaining <= 0:
            # One more pull: the SuperLink hands out each reply once, and Flower's grid
            # inflates a pull's replies one after the other, so replies announced while a
            # stalled upload held the previous pull until the deadline are still to be had.
            last_pull = True
            continue
        time.sleep(min(poll_interval, remaining))
    replies = [reply for reply, _ in arrivals]
    return Exchange(replies, time.monotonic() - started, _last_reply_lag(arrivals), pulls, destinations,
                    sorted(destinations[message_id] for message_id in pending))
