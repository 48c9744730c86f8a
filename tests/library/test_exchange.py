"""The round loop's own push-and-poll (fedgma.loop.exchange) against Flower's send_and_receive.

``TimedGrid`` makes each node's reply ready a scripted time after the push. Flower's own
waiting loop (``InMemoryGrid.send_and_receive``, the same loop as the deployed
``HttpGrid``'s but with a settable interval) runs on the same grid, so the replies, their
order and the timeout are compared with Flower's code, not with a copy of it.
"""

import logging
import time

import numpy as np
import pytest
from flower_messages import error_reply, set_task_identity, train_reply
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.superlink.grid import http_grid
from flwr.superlink.grid.inmemory_grid import InMemoryGrid
from stored_grid import Node, StoredGrid

from fedgma.loop.exchange import ReplyLimits, exchange

flower_pull_objects = http_grid.pull_objects


class TimedGrid:
    """Node ``n``'s reply is ready ``delays[n]`` seconds after the push (None: never);
    ``errors`` reply with an error; ``unpushable`` are refused by the push (id None)."""

    def __init__(self, delays, errors=(), unpushable=(), pull_interval=0.1):
        self.delays = delays
        self.errors = set(errors)
        self.unpushable = set(unpushable)
        self.pull_interval = pull_interval  # read by Flower's InMemoryGrid.send_and_receive
        self.ready = {}  # message id -> (time ready, node)
        self.pulls = 0

    def push_messages(self, messages):
        now = time.monotonic()
        ids = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node in self.unpushable:
                ids.append(None)
                continue
            message_id = f"m{len(self.ready)}-{node}"
            if self.delays[node] is not None:
                self.ready[message_id] = (now + self.delays[node], node)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        now = time.monotonic()
        due = sorted((self.ready[i][0], i) for i in message_ids if i in self.ready and self.ready[i][0] <= now)
        replies = []
        for ready_at, message_id in due:
            node = self.ready.pop(message_id)[1]
            created = time.time() - (now - ready_at)
            reply = (error_reply(node, message_id, created) if node in self.errors
                     else train_reply(node, {"w": np.full(2, node, np.float32)}, 10, reply_to=message_id,
                                      created_at=created))
            replies.append(reply)
        return replies

    def send_and_receive(self, messages, timeout):
        return InMemoryGrid.send_and_receive(self, messages, timeout=timeout)  # Flower's loop, this grid


def instructions(nodes):
    set_task_identity()
    return [Message(RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord()}), dst_node_id=n,
                    message_type="train") for n in nodes]


def sources(replies):
    return [m.metadata.src_node_id for m in replies]


def test_replies_arrive_in_pull_order_and_the_wait_ends_soon_after_the_last():
    grid = TimedGrid({1: 0.25, 2: 0.05, 3: 0.15})
    got = exchange(grid, instructions([1, 2, 3]), timeout=10, poll_interval=0.02)
    assert sources(got.replies) == [2, 3, 1]
    assert 0.25 <= got.wait_seconds < 0.25 + 0.15
    assert 0 <= got.last_reply_lag < 0.15 and got.pulls >= 5


def test_the_same_replies_in_the_same_order_as_flowers_loop_but_without_its_sleep():
    delays = {1: 0.3, 2: 0.1, 3: 0.2, 4: None, 5: 0.05}
    ours = exchange(TimedGrid(delays, errors={3}), instructions([1, 2, 3, 4, 5]), timeout=1.2, poll_interval=0.02)
    # Flower's loop with a 0.5 s sleep: pulls at 0 and 0.5 s, then gives up at the 1.2 s timeout.
    flower = exchange(TimedGrid(delays, errors={3}, pull_interval=0.5), instructions([1, 2, 3, 4, 5]),
                      timeout=1.2, poll_interval=None)
    assert sources(ours.replies) == [5, 2, 3, 1]  # node 4 never answers; 3's error reply is kept
    assert sorted(sources(flower.replies)) == sorted(sources(ours.replies))
    assert [m.has_error() for m in ours.replies] == [False, False, True, False]
    assert 1.2 <= ours.wait_seconds < 1.2 + 0.15  # both wait for node 4 until the timeout
    assert 1.2 <= flower.wait_seconds < 1.5 + 0.15  # Flower's may sleep past it
    # Everything in at 0.3 s: Flower's loop sees the last reply at its next pull (0.5 s), ours within 0.02 s.
    complete = {n: d for n, d in delays.items() if d is not None}
    fast = exchange(TimedGrid(complete), instructions(complete), timeout=10, poll_interval=0.02)
    slow = exchange(TimedGrid(complete, pull_interval=0.5), instructions(complete), timeout=10, poll_interval=None)
    assert fast.wait_seconds < 0.3 + 0.1 and slow.wait_seconds >= 0.5
    assert fast.last_reply_lag < 0.1 and slow.last_reply_lag >= 0.15


def test_a_reply_landing_just_before_the_timeout_is_still_collected():
    got = exchange(TimedGrid({1: 0.05, 2: 0.33}), instructions([1, 2]), timeout=0.35, poll_interval=0.3)
    assert sources(got.replies) == [1, 2]  # pulls at 0, 0.3 and once more at the 0.35 s deadline


def test_a_message_the_grid_could_not_push_is_not_waited_for(caplog):
    with caplog.at_level(logging.WARNING):
        got = exchange(TimedGrid({1: 0.05, 2: 0.05}, unpushable={2}), instructions([1, 2]), timeout=5,
                       poll_interval=0.02)
    assert sources(got.replies) == [1] and got.wait_seconds < 1.0
    assert "1 of 2 messages could not be pushed" in caplog.text


def test_a_second_reply_to_one_message_is_ignored():
    grid = TimedGrid({1: 0.0})
    pushed = grid.push_messages  # push twice under one id: the grid then holds two replies to it

    def push_twice(messages):
        ids = pushed(messages)
        grid.ready[ids[0] + "-again"] = grid.ready[ids[0]]
        return ids

    grid.push_messages = push_twice
    real_pull = grid.pull_messages
    grid.pull_messages = lambda ids: real_pull([*ids, *(i + "-again" for i in ids)])
    got = exchange(grid, instructions([1]), timeout=1, poll_interval=0.02)
    assert len(got.replies) == 1


def test_no_replies_and_a_bad_interval():
    got = exchange(TimedGrid({1: None}), instructions([1]), timeout=0.1, poll_interval=0.05)
    assert got.replies == [] and got.last_reply_lag is None
    with pytest.raises(ValueError, match="poll_interval"):
        exchange(TimedGrid({1: 0.0}), instructions([1]), timeout=1, poll_interval=0)


def honest(seed, size=3):
    return {"w": np.full(size, seed, np.float32)}


def test_objects_still_uploading_are_retried_at_the_poll_interval_only_while_pulling():
    # Flower's HttpGrid, on a stand-in SuperLink: the node announces its reply at once and
    # uploads one object every 0.1 s; Flower would retry each after 1 s, then 2 s ...
    grid = StoredGrid({1: Node(honest(1), per_object=0.1)})
    got = exchange(grid, instructions([1]), timeout=10, poll_interval=0.02)
    assert [r.has_error() for r in got.replies] == [False] and got.wait_seconds < 1.0
    assert http_grid.pull_objects is flower_pull_objects  # Flower's own pulls are back


def test_an_upload_that_never_ends_fails_at_the_deadline_and_holds_no_other_reply():
    # Node 2 announces its reply, then drips one object every 50 s (Flower would wait up to
    # 2 hours for it); node 3 never replies; node 4 replies while node 2's upload holds the pull.
    grid = StoredGrid({1: Node(honest(1)), 2: Node(honest(2), per_object=50.0), 3: Node(honest(3), announce=None),
                       4: Node(honest(4), announce=0.3)})
    got = exchange(grid, instructions([1, 2, 3, 4]), timeout=2, poll_interval=0.05)
    assert 2 <= got.wait_seconds < 2 + 1.5  # the deadline, plus at most one object retry
    answered = [got.node_of(r) for r in got.replies if not r.has_error()]
    assert answered == [1, 4]
    assert [got.node_of(r) for r in got.unavailable()] == [2] and got.unanswered == [3]
    assert "timeout" in got.unavailable()[0].error.reason


def test_a_reply_larger_than_the_model_allows_is_refused_while_it_is_pulled():
    model = honest(0, size=3 << 20)  # 12 MiB: three objects of Flower's 5 MiB chunks
    limits = ReplyLimits.for_model(model.values())
    assert limits.max_bytes == 2 * (12 << 20) + (1 << 20)
    big = {"extra": np.zeros(16 << 20, np.float32)}  # 64 MiB more, in 5 MiB objects
    grid = StoredGrid({1: Node(honest(1, size=3 << 20)), 2: Node(honest(2, size=3 << 20), extra=big)})
    got = exchange(grid, instructions([1, 2]), timeout=10, poll_interval=0.05, limits=limits)
    assert [got.node_of(r) for r in got.replies if not r.has_error()] == [1]
    [refused] = got.unavailable()
    assert got.node_of(refused) == 2 and "larger than the" in refused.error.reason
    # The refusal came while pulling: far fewer objects than the 17 of node 2's reply.
    assert grid.runtime.object_pulls < 4 + 17


def test_a_reply_of_too_many_objects_is_refused_before_any_is_pulled():
    model = honest(0)
    limits = ReplyLimits.for_model(model.values())
    many = {f"x{i}": np.full(1, i, np.float32) for i in range(limits.max_objects)}
    grid = StoredGrid({2: Node(honest(2), extra=many)})
    got = exchange(grid, instructions([2]), timeout=10, poll_interval=0.05, limits=limits)
    [refused] = got.unavailable()
    assert "objects, more than the" in refused.error.reason and grid.runtime.object_pulls == 0
