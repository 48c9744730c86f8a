"""Build Flower Messages and a Grid stand-in to drive a strategy without a server."""

from __future__ import annotations

import itertools

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.error import Error
from flwr.supercore.task_identity import TaskIdentity

_ids = itertools.count(1)


class FakeGrid:
    """Only what a strategy's configure_* calls: the connected node ids."""

    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return self.node_ids


class CannedGrid(FakeGrid):
    """A grid whose node ``n`` answers every instruction with the canned reply whose source
    is ``n`` (Flower's ``send_and_receive``; replies come back in the order given)."""

    def __init__(self, replies):
        super().__init__(r.metadata.src_node_id for r in replies)
        self.replies = {r.metadata.src_node_id: r for r in replies}

    def send_and_receive(self, messages, timeout):
        wanted = {m.metadata.dst_node_id for m in messages}
        return [r for node, r in self.replies.items() if node in wanted]


def set_task_identity(run_id: int = 1) -> None:
    """Give this process the run identity Message() needs in Flower 1.39."""
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 0


def _metadata(node_id: int, reply_to: str = "instruction", created_at: float = 0.0) -> Metadata:
    return Metadata(
        run_id=1,
        message_id=f"reply-{next(_ids)}",
        src_node_id=node_id,
        dst_node_id=0,
        reply_to_message_id=reply_to,
        group_id="1",
        created_at=created_at,
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )


def train_reply(node_id: int, arrays: dict[str, np.ndarray], num_examples, *, reply_to: str = "instruction",
                created_at: float = 0.0, **metrics) -> Message:
    """A ClientApp's training reply: one ArrayRecord, one MetricRecord."""
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": num_examples, **metrics}),
        }
    )
    return Message(content=content, metadata=_metadata(node_id, reply_to, created_at))


def raw_reply(node_id: int, content: RecordDict) -> Message:
    """A reply with arbitrary content."""
    return Message(content=content, metadata=_metadata(node_id))


def error_reply(node_id: int, reply_to: str = "instruction", created_at: float = 0.0) -> Message:
    """A reply carrying an error, as Flower sends for a failed ClientApp."""
    return Message(error=Error(code=2, reason="ClientApp raised"), metadata=_metadata(node_id, reply_to, created_at))


def global_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def configure(strategy, arrays: dict[str, np.ndarray], num_nodes: int = 4) -> None:
    """Run the strategy's configure_train so it records the weights it sends."""
    set_task_identity()
    list(strategy.configure_train(1, global_record(arrays), ConfigRecord(), FakeGrid(range(1, num_nodes + 1))))
