"""What one lying or stalling client can do to a round of the loop, with the protections on.

The attacks are those seen against a deployment (../shared/notes/SECURITY-1.39.md, "Fleet and
clients"): a client claiming 1e-6 or 10^15 examples with weights far from the model, a client
claiming another's partition, a node that announces its reply and never finishes uploading it.
Each is run with the protection off (the library's FedAvg-like default, where the attack works)
and on, and the protected round is compared with an honest one computed independently.
"""

import numpy as np
import pytest
from flower_messages import set_task_identity
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg
from stored_grid import Node, StoredGrid
from test_rounds_and_checkpoints import ScriptedGrid, initial

from fedgma.loop import RoundLoop
from fedgma.loop.checkpoint import load_checkpoint
from fedgma.strategy import FedGMA
from fedgma.strategy.validation import ReplyBounds, update_norm

HONEST = {n: "ok" for n in range(1, 5)}  # node n holds partition n and claims 10 n examples, truthfully


def known_size(partition: int, num_partitions: int) -> int:
    """What the server computes for each partition (the honest nodes' claims are true)."""
    return 10 * partition


def one_round(behaviour, strategy=FedAvg, **options):
    set_task_identity()
    loop = RoundLoop(strategy(min_train_nodes=1, min_available_nodes=1),
                     ScriptedGrid(behaviour, np.random.default_rng(1), num_partitions=options.get("num_partitions")),
                     timeout=5, **options)
    arrays, outcome = loop.train_round(1, initial())
    return {k: v.numpy() for k, v in arrays.items()}, outcome


@pytest.mark.parametrize("claim", ["liar-1e-06", "huge"])
@pytest.mark.parametrize("strategy", [FedAvg, FedGMA])
def test_a_claimed_weight_is_replaced_by_the_partition_size_the_server_knows(claim, strategy):
    start = {k: v.numpy() for k, v in initial().items()}
    # Unprotected, a tiny claim makes the liar's weights count for nothing and a huge one
    # for everything: with one honest node, the liar takes the model (FedAvg, the claim 10^15).
    taken, _ = one_round({1: "ok", 5: "huge"})
    assert np.abs(taken["w"] - start["w"]).min() > 99
    # Protected: node 5 (partition 5) counts as 50 examples whatever it claims, the same
    # bits as a round in which it had claimed 50.
    vouched, outcome = one_round({**HONEST, 5: claim}, strategy, partition_sizes=known_size)
    assert (outcome.used, outcome.corrected, outcome.dropped) == (5, 1, 0)
    truthful, outcome = one_round({**HONEST, 5: "liar-50"}, strategy, partition_sizes=known_size)
    assert outcome.corrected == 0
    for name in vouched:
        np.testing.assert_array_equal(vouched[name], truthful[name])


def test_with_two_nodes_a_tiny_claim_neither_drops_the_honest_reply_nor_takes_the_model():
    # Seen deployed with min-nodes=2: a claim of 1e-6 examples set the model alone.
    vouched, outcome = one_round({1: "ok", 5: "liar-1e-06"}, partition_sizes=known_size,
                                 bounds=ReplyBounds(max_norm_ratio=3))
    assert (outcome.used, outcome.dropped, outcome.corrected) == (2, 0, 1)
    honest_only, _ = one_round({1: "ok"})
    start = {k: v.numpy() for k, v in initial().items()}
    # The liar's update (norm ~ 100 x sqrt(16)) is clipped to 3 x the lower median norm (the
    # honest one), then weighted 50 / 60: the model moves by at most that, never by 100.
    honest_norm = update_norm(honest_only, start)
    assert update_norm(vouched, start) <= 3 * honest_norm + 1e-6
    assert np.abs(vouched["w"] - start["w"]).max() < 1


def test_a_reply_that_declares_no_partition_has_no_weight_the_server_can_vouch_for():
    _, outcome = one_round({**HONEST, 6: "undeclared"}, partition_sizes=known_size)
    assert outcome.used == 4 and outcome.drop_reasons == [
        "node 6: declares no partition (partition-id, num-partitions): the server cannot vouch for its weight"]


def test_operator_bindings_keep_a_liar_from_blocking_or_taking_a_partition():
    # Node 7 claims node 2's partition in the same round. First come, first bound, neither
    # can be trusted, so both are refused; with the operator's bindings node 2 keeps it.
    _, outcome = one_round({**HONEST, 7: "claims-2"}, num_partitions=8)
    assert outcome.used == 3 and len(outcome.drop_reasons) == 2
    bindings = {n: n for n in HONEST}
    _, outcome = one_round({**HONEST, 7: "claims-2"}, num_partitions=8, partition_bindings=bindings)
    assert outcome.used == 4 and outcome.drop_reasons == ["node 7: node 7 has no partition in the operator's bindings"]
    # A bound node cannot move to another partition, nor send a reply without one.
    _, outcome = one_round({**HONEST, 2: "claims-5"}, num_partitions=8, partition_bindings=bindings)
    assert outcome.drop_reasons == ["node 2: node 2 holds partition 2 and now claims 5"]
    _, outcome = one_round({**HONEST, 9: "undeclared"}, num_partitions=8, partition_bindings=bindings)
    assert outcome.drop_reasons == ["node 9: node 9 has no partition in the operator's bindings"]
    with pytest.raises(ValueError, match="partition 1 is bound to nodes 1 and 2"):
        RoundLoop(FedAvg(), ScriptedGrid(HONEST, None), partition_bindings={1: 1, 2: 1})


def test_the_partition_bindings_survive_a_resume(tmp_path):
    set_task_identity()
    grid = ScriptedGrid(HONEST, np.random.default_rng(0), num_partitions=8)

    def loop():
        return RoundLoop(FedAvg(min_train_nodes=1, min_available_nodes=1), grid, timeout=5, num_partitions=8)

    loop().run_checkpointed(initial(), 1, tmp_path)
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.partitions == {n: n for n in HONEST}
    # After the resume node 7 claims partition 2 in the same round as node 2: node 2 still
    # holds it (a loop without the checkpoint's bindings refuses both, as above).
    grid.behaviour = {**HONEST, 7: "claims-2"}
    resumed = loop()
    result = resumed.run_checkpointed(initial(), 2, tmp_path, resume_from=checkpoint)
    assert result.train_metrics_clientapp[2] is not None
    outcome = load_checkpoint(tmp_path).history[2]
    assert outcome["used"] == 4 and outcome["drop_reasons"] == ["node 7: partition 2 belongs to node 2"]


def test_a_node_that_stalls_its_upload_costs_one_deadline_then_rests():
    """Flower's deployed grid on a stand-in SuperLink: node 3 announces each reply and uploads
    one object every 60 s (Flower would wait up to 2 hours per reply)."""
    model = {"w": np.zeros(4, np.float32)}
    nodes = {n: Node({"w": np.full(4, n, np.float32)}, num_examples=10) for n in (1, 2)}
    nodes[3] = Node({"w": np.full(4, 3, np.float32)}, per_object=60.0)
    grid = StoredGrid(nodes)
    set_task_identity()
    loop = RoundLoop(FedAvg(min_train_nodes=2, min_available_nodes=2), grid, timeout=1.5,
                     poll_interval=0.05, skip_timed_out_rounds=2)
    arrays = ArrayRecord({"w": __import__("flwr").app.Array(model["w"])})
    outcomes = []
    for server_round in range(1, 5):
        arrays, outcome = loop.train_round(server_round, arrays)
        outcomes.append(outcome)
    first = outcomes[0]
    assert (first.sent, first.used, first.timed_out, first.failed) == (3, 2, 1, 0)
    assert first.train_wait_seconds < 1.5 + 1.5  # the deadline, plus at most one object retry
    np.testing.assert_array_equal(arrays["w"].numpy(), np.full(4, 1.5, np.float32))  # nodes 1 and 2 only
    # Rounds 2 and 3 leave node 3 out: no wait for it; round 4 samples it again.
    assert [o.sent for o in outcomes[1:]] == [2, 2, 3]
    assert max(o.train_wait_seconds for o in outcomes[1:3]) < 1.0


def test_a_node_is_not_rested_where_too_few_others_are_connected():
    nodes = {1: Node({"w": np.ones(2, np.float32)}), 2: Node({"w": np.ones(2, np.float32)}, announce=None)}
    set_task_identity()
    loop = RoundLoop(FedAvg(min_train_nodes=2, min_available_nodes=2), StoredGrid(nodes), timeout=0.5,
                     poll_interval=0.05, skip_timed_out_rounds=3)
    arrays = ArrayRecord({"w": __import__("flwr").app.Array(np.zeros(2, np.float32))})
    _, first = loop.train_round(1, arrays)
    _, second = loop.train_round(2, arrays)  # Flower's sampling would wait for a second node forever
    assert first.timed_out == 1 and second.sent == 2


def test_a_round_whose_update_jumps_by_orders_of_magnitude_is_flagged(caplog):
    set_task_identity()
    grid = ScriptedGrid(HONEST, np.random.default_rng(0), num_partitions=8)
    loop = RoundLoop(FedAvg(min_train_nodes=1, min_available_nodes=1), grid, timeout=5)
    arrays = initial()
    for server_round in (1, 2):
        arrays, outcome = loop.train_round(server_round, arrays)
        assert outcome.update_norm > 0 and not outcome.warnings
    grid.behaviour = {**HONEST, 5: "huge"}
    _, outcome = loop.train_round(3, arrays)
    assert outcome.warnings and "x the median of the earlier rounds'" in outcome.warnings[0]
    assert outcome.as_row()["update-norm"] > 100


def test_without_num_partitions_a_node_cannot_size_its_own_share():
    # Node 5 declares num-partitions=1: partition 0 of 1 would be the whole data set. The run's
    # nodes declare 6 (ScriptedGrid: max node id + 1), so it is refused, weights vouched or not.
    grid = ScriptedGrid({**HONEST, 5: "ok"}, np.random.default_rng(1))
    liar = grid.reply

    def reply(message, reply_to):
        answer = liar(message, reply_to)
        if message.metadata.dst_node_id == 5:
            answer.content["node"]["num-partitions"] = 1
            answer.content["node"]["partition-id"] = 0
        return answer

    grid.reply = reply
    set_task_identity()
    loop = RoundLoop(FedAvg(min_train_nodes=1, min_available_nodes=1), grid, timeout=5, partition_sizes=known_size)
    _, outcome = loop.train_round(1, initial())
    assert outcome.used == 4 and outcome.drop_reasons == ["node 5: declares num-partitions=1, the run's nodes 6"]
    assert loop.claims.declared_total == 6
