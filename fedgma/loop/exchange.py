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
as before (:func:`_object_retry`, for grids that pull objects this way: ``HttpGrid``,
Flower 1.39 to 1.42).

``poll_interval=None`` leaves the wait to the grid's own ``send_and_receive``.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from logging import WARNING

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore import log

__all__ = ["DEFAULT_POLL_INTERVAL", "Exchange", "exchange"]

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
    """

    replies: list[Message]
    wait_seconds: float
    last_reply_lag: float | None
    pulls: int


@contextmanager
def _object_retry(grid: Grid, seconds: float) -> Iterator[None]:
    """While inside, the grid's module retries an unavailable object after ``seconds``
    (then doubling) instead of Flower's 1 s; grids without ``pull_objects`` are left as they are."""
    module = sys.modules.get(type(grid).__module__)
    pull_objects = getattr(module, "pull_objects", None)
    if pull_objects is None:
        yield
        return
    module.pull_objects = functools.partial(pull_objects, initial_backoff=seconds)  # type: ignore[union-attr]
    try:
        yield
    finally:
        module.pull_objects = pull_objects  # type: ignore[union-attr]


def _last_reply_lag(arrivals: list[tuple[Message, float]]) -> float | None:
    """Seconds from the newest reply's creation to its arrival (wall clock); None without one."""
    stamped = [(reply.metadata.created_at, at) for reply, at in arrivals if reply.metadata.created_at > 0]
    if not stamped:
        return None
    created, arrived = max(stamped)
    return max(arrived - created, 0.0)


def exchange(grid: Grid, messages: Iterable[Message], timeout: float,
             poll_interval: float | None = DEFAULT_POLL_INTERVAL) -> Exchange:
    """Push ``messages`` and pull their replies every ``poll_interval`` seconds until all
    are in or ``timeout`` seconds have passed (see the module docstring)."""
    messages = list(messages)
    started = time.monotonic()
    if poll_interval is None:
        replies = list(grid.send_and_receive(messages=messages, timeout=timeout))
        arrived = time.time()
        return Exchange(replies, time.monotonic() - started, _last_reply_lag([(r, arrived) for r in replies]), 0)
    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be > 0 seconds (or None), got {poll_interval!r}")
    pending = {message_id for message_id in grid.push_messages(messages) if message_id}
    if len(pending) < len(messages):
        log(WARNING, "%s of %s messages could not be pushed to the SuperLink", len(messages) - len(pending),
            len(messages))
    deadline = started + timeout
    arrivals: list[tuple[Message, float]] = []
    pulls = 0
    while pending:
        with _object_retry(grid, poll_interval):
            pulled = list(grid.pull_messages(sorted(pending)))
        pulls += 1
        arrived = time.time()
        for reply in pulled:
            if reply.metadata.reply_to_message_id in pending:  # else a second reply to one message: skipped
                pending.discard(reply.metadata.reply_to_message_id)
                arrivals.append((reply, arrived))
        remaining = deadline - time.monotonic()
        if not pending or remaining <= 0:
            break
        time.sleep(min(poll_interval, remaining))
    replies = [reply for reply, _ in arrivals]
    return Exchange(replies, time.monotonic() - started, _last_reply_lag(arrivals), pulls)
