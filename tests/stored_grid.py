"""Flower's deployed grid (``HttpGrid``, Flower 1.39) on a stand-in for the SuperLink's Runtime API.

:class:`StoredGrid` is the real ``HttpGrid``: its ``push_messages`` and ``pull_messages``
(the object pulls with ``pull_objects`` included) run Flower's own code. Only the HTTP
client below it is replaced by :class:`RuntimeStandIn`, which keeps messages and objects
as the SuperLink's store does: a node's reply is handed out once, as soon as the node
has announced it, while its objects become available as the node uploads them. How each node
replies is scripted (:class:`Node`): after how long it announces its reply, how long it
then takes per object (a node that drips its upload), or never; and what it sends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.app.message import remove_content_from_message
from flwr.common.serde import message_to_proto
from flwr.proto.message_pb2 import PullObjectResponse  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    PullAppMessagesResponse,
    PushAppMessagesResponse,
)
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.run import Run
from flwr.superlink.grid.http_grid import HttpGrid


@dataclass
class Node:
    """How one node answers: announce its reply ``announce`` seconds after the instruction
    (None: never), then make one object available every ``per_object`` seconds;
    ``arrays`` (the reply's weights) and ``num_examples``; ``extra`` arrays appended."""

    arrays: dict[str, np.ndarray]
    num_examples: float = 10
    announce: float | None = 0.0
    per_object: float = 0.0
    extra: dict[str, np.ndarray] | None = None


class RuntimeStandIn:
    """The Runtime API calls ``HttpGrid`` makes, answered from memory."""

    def __init__(self, nodes: dict[int, Node]) -> None:
        self.nodes = nodes
        self.instructions: dict[str, tuple[int, float]] = {}  # message id -> (node, pushed at)
        self.objects: dict[str, bytes] = {}
        self.ready_at: dict[str, float] = {}  # object id -> when its upload is done
        self.replies: dict[str, tuple[float, Message]] = {}  # instruction id -> (announced at, reply)
        self.object_pulls = 0
        self.handed_out: set[str] = set()

    # --- what the ServerApp's grid calls -----------------------------------------------
    def PushMessages(self, request):
        ids = []
        for proto in request.messages_list:
            node = proto.metadata.dst_node_id
            message_id = proto.metadata.message_id
            self.instructions[message_id] = (node, time.monotonic())
            ids.append(message_id)
        return PushAppMessagesResponse(message_ids=ids, objects_to_push=[], session_id="session")

    def PushObject(self, request):
        raise AssertionError("objects_to_push is empty: nothing is pushed")

    def PullMessages(self, request):
        now = time.monotonic()
        protos, trees = [], []
        for message_id in request.message_ids:
            if message_id not in self.instructions:
                continue
            self._announce(message_id, now)
            if message_id in self.replies and message_id not in self.handed_out:
                self.handed_out.add(message_id)  # the SuperLink hands out a reply once
                reply = self.replies[message_id][1]
                protos.append(message_to_proto(remove_content_from_message(reply)))
                trees.append(get_object_tree(reply))
        return PullAppMessagesResponse(messages_list=protos, message_object_trees=trees)

    def PullObject(self, request):
        self.object_pulls += 1
        object_id = request.object_id
        if object_id not in self.objects:
            return PullObjectResponse(object_found=False)
        if time.monotonic() < self.ready_at[object_id]:
            return PullObjectResponse(object_found=True, object_available=False)
        return PullObjectResponse(object_found=True, object_available=True,
                                  object_content=self.objects[object_id])

    def ConfirmMessageReceived(self, request):
        return None

    # --- the nodes ---------------------------------------------------------------------
    def _announce(self, message_id: str, now: float) -> None:
        node_id, pushed = self.instructions[message_id]
        node = self.nodes[node_id]
        if message_id in self.replies or node.announce is None or now < pushed + node.announce:
            return
        arrays = {**node.arrays, **(node.extra or {})}
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                              "metrics": MetricRecord({"num-examples": node.num_examples})})
        reply = Message(content, reply_to=_instruction(message_id, node_id))
        reply.metadata.__dict__["_src_node_id"] = node_id
        reply.metadata.__dict__["_message_id"] = reply.object_id
        announced = pushed + node.announce
        for step, (object_id, obj) in enumerate(get_all_nested_objects(reply).items(), start=1):
            self.objects[object_id] = obj.deflate()
            # Objects are stored by content: one another node uploaded already stays available.
            self.ready_at[object_id] = min(self.ready_at.get(object_id, np.inf), announced + step * node.per_object)
        self.replies[message_id] = (announced, reply)


def _instruction(message_id: str, node_id: int) -> Message:
    """A stand-in for the instruction a reply answers (only its ids matter)."""
    message = Message(RecordDict(), dst_node_id=node_id, message_type="train")
    message.metadata.__dict__["_message_id"] = message_id
    message.metadata.__dict__["_run_id"] = 1
    return message


class StoredGrid(HttpGrid):
    """Flower's ``HttpGrid`` on a :class:`RuntimeStandIn` (see the module docstring)."""

    def __init__(self, nodes: dict[int, Node], run_id: int = 1) -> None:
        super().__init__(token="stand-in")
        self.runtime = RuntimeStandIn(nodes)
        self._client = self.runtime  # type: ignore[assignment]  # HttpGrid is "connected"
        self._run = Run.create_empty(run_id)

    def get_node_ids(self):
        return sorted(self.runtime.nodes)


def time_of(action: Callable[[], object]) -> tuple[object, float]:
    started = time.monotonic()
    result = action()
    return result, time.monotonic() - started
