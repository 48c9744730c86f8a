"""Which node holds which data partition, as the replies declare it, checked by the server.

A ClientApp declares its place in the federation in its reply (``NODE_RECORD``:
``partition-id`` and ``num-partitions`` from its ``--node-config``). The server uses
it only to put the replies in a fixed order (so sums, and the weights, do not depend
on arrival order), but a client is free to declare anything. So a declaration is
accepted only if

- ``partition-id`` is an integer in ``[0, N)``, where ``N`` is the run's
  ``num-partitions`` when set, else the reply's own ``num-partitions``, which must be the one
  most replies declared when the run first saw them (so no node sizes its own share);
- no other reply of the round claims the same partition, unless that partition
  already belongs to this node (then the others are refused); a partition claimed by
  several nodes of which none holds it yet is refused to all of them, since the
  server cannot tell which one is lying;
- the node claims the partition it claimed before: a node is bound to the first
  partition it was accepted with, for the rest of the run.

A reply without a declaration is not refused: it is put after the declared ones, in
node-id order.

First come, first bound leaves two gaps: a node that claims another's partition before
that node's first reply takes it, and one that claims it in the same round blocks both.
The server's operator closes them with ``bindings`` (node id -> partition, e.g. written
when the SuperNodes' keys are registered): then a node holds the partition it is bound
to, whatever it declares, and a node without a binding is refused. Without them, the
bindings made so far are kept in the run's checkpoint (:meth:`PartitionClaims.restore`),
so a resumed run does not hand a partition to whoever claims it first after the resume.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flwr.app import Message

if TYPE_CHECKING:
    from typing_extensions import TypeIs

NODE_RECORD = "node"  # ConfigRecord a ClientApp adds to its reply: {"partition-id", "num-partitions"}
UNDECLARED = 2**62  # sort key of a reply that declares no partition: after every real one


def _integer(value: object) -> TypeIs[int]:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class PartitionClaims:
    """The partitions the nodes of one run hold, and the checks of each round's claims.

    Parameters
    ----------
    num_partitions : Optional[int]
        Partitions in the federation; ``None`` bounds each claim by its own
        ``num-partitions``.
    """

    num_partitions: int | None = None
    bindings: Mapping[int, int] | None = None
    holder: dict[int, int] = field(default_factory=dict)  # partition -> node id
    held: dict[int, int] = field(default_factory=dict)  # node id -> partition
    # Without ``num_partitions``: the num-partitions most replies declared when first seen (a
    # tie goes to the larger, whose partitions weigh less); later declarations must match it.
    declared_total: int | None = None

    def __post_init__(self) -> None:
        if self.bindings is None:
            return
        for node, partition in self.bindings.items():
            problem = self._range_problem(partition, None) if _integer(node) else f"node id {node!r}"
            if problem is not None:
                raise ValueError(f"partition bindings: node {node}: {problem}")
            if partition in self.holder:
                raise ValueError(f"partition bindings: partition {partition} is bound to nodes "
                                 f"{self.holder[partition]} and {node}")
            self.holder[partition], self.held[node] = node, partition

    def restore(self, held: Mapping[int, int], connected: Iterable[int]) -> list[int]:
        """Take back a checkpoint's bindings (node id -> partition) of the nodes that are
        connected now; returns the nodes whose bindings were let go (not connected: a
        simulation's node ids, for one, are new each time it starts). Operator bindings win."""
        online = set(connected)
        released = []
        for node, partition in held.items():
            if self.bindings is not None:
                continue
            if node not in online or self.holder.get(partition, node) != node:
                released.append(node)
                continue
            self.holder[partition], self.held[node] = node, partition
        return sorted(released)

    def declared(self, message: Message) -> tuple[object, object] | None:
        """``(partition-id, num-partitions)`` as the reply declares them, or None."""
        record = message.content.config_records.get(NODE_RECORD) if message.has_content() else None
        if record is None:
            return None
        return record.get("partition-id"), record.get("num-partitions")

    def _range_problem(self, partition: object, declared_total: object) -> str | None:
        if not _integer(partition):
            return f"partition-id {partition!r} is not an integer"
        if declared_total is not None and not _integer(declared_total):
            return f"num-partitions {declared_total!r} is not an integer"
        total = declared_total
        if self.num_partitions is not None:
            if declared_total is not None and declared_total != self.num_partitions:
                return f"declares num-partitions={declared_total}, the run has {self.num_partitions}"
            total = self.num_partitions
        if partition < 0 or (total is not None and partition >= total):
            return f"partition-id {partition} is out of range [0, {total})"
        return None

    def check(self, replies: list[Message]) -> tuple[list[Message], list[tuple[Message, str]]]:
        """Split one round's replies into accepted ones and ``(reply, reason)`` refusals."""
        refused: list[tuple[Message, str]] = []
        claims: dict[int, int] = {}  # index in replies -> claimed partition
        totals: dict[int, object] = {}  # index in replies -> declared num-partitions
        for index, message in enumerate(replies):
            declaration = self.declared(message)
            if declaration is None:
                continue
            partition, total = declaration
            node = message.metadata.src_node_id
            problem = self._range_problem(partition, total)
            if problem is not None:
                refused.append((message, problem))
                continue
            assert _integer(partition)  # _range_problem refuses any other
            if self.bindings is not None and node not in self.bindings:
                problem = f"node {node} has no partition in the operator's bindings"
            if problem is None and node in self.held and self.held[node] != partition:
                problem = f"node {node} holds partition {self.held[node]} and now claims {partition}"
            if problem is None and self.holder.get(partition, node) != node:
                problem = f"partition {partition} belongs to node {self.holder[partition]}"
            if problem is not None:
                refused.append((message, problem))
                continue
            claims[index], totals[index] = partition, total
        if self.num_partitions is None:  # one num-partitions for the run, else a node could size its own share
            if self.declared_total is None:
                seen = Counter(total for total in totals.values() if _integer(total))
                if seen:
                    self.declared_total = max(seen, key=lambda total: (seen[total], total))
            for index, total in totals.items():
                if self.declared_total is not None and total != self.declared_total:
                    refused.append((replies[index], f"declares num-partitions={total}, the run's nodes "
                                                    f"{self.declared_total}"))
                    del claims[index]
        counts = Counter(claims.values())
        for index, partition in list(claims.items()):
            if counts[partition] > 1 and self.holder.get(partition) is None:
                refused.append((replies[index], f"partition {partition} is claimed by {counts[partition]} "
                                                "nodes in this round"))
                del claims[index]
        for index, partition in claims.items():
            node = replies[index].metadata.src_node_id
            self.holder[partition] = node
            self.held[node] = partition
        for message in replies:  # undeclared: only a node the operator bound may send one
            node = message.metadata.src_node_id
            if self.declared(message) is None and self.bindings is not None and node not in self.bindings:
                refused.append((message, f"node {node} has no partition in the operator's bindings"))
        refused_ids = {id(message) for message, _ in refused}
        accepted = [m for m in replies if id(m) not in refused_ids]
        return accepted, refused

    def place(self, message: Message) -> tuple[int, int] | None:
        """``(partition, num_partitions)`` of an accepted reply's node, as far as the server
        knows them (the run's ``num_partitions``, else what the node declared); None if not."""
        node = message.metadata.src_node_id
        partition = self.held.get(node)
        total = self.num_partitions if self.num_partitions is not None else self.declared_total
        return None if partition is None or total is None else (partition, total)

    def order(self, message: Message) -> tuple[int, int]:
        """Sort key of an accepted reply: its partition, then its node id."""
        partition = self.held.get(message.metadata.src_node_id)
        return (UNDECLARED if partition is None else partition), message.metadata.src_node_id
