"""The ServerApp's round loop (faults, order, min-train-replies) and its checkpoints, without processes."""

import io

import numpy as np
import pytest
from flower_messages import error_reply, global_record, set_task_identity, train_reply
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM
from run_settings import settings

from fedgma.app.config import parse_run_config
from fedgma.loop import checkpoint as ckpt
from fedgma.loop.rounds import NODE_RECORD, RoundLoop
from fedgma.loop.run_folder import RunFolder
from fedgma.strategy import FedGMA, FedGMAAdam


class ScriptedGrid:
    """A grid whose nodes reply as scripted: 'ok', 'error', 'nan', 'silent' (timed out), or lie:
    'huge' / 'many' (claim 10^15 examples / 50 x the others' count, with weights far away),
    'claims-N' (declares partition N), 'undeclared' (declares none). A node's partition is its id.

    Both ways of waiting work: Flower's ``send_and_receive``, and ``push_messages`` then
    ``pull_messages`` (all replies ready at the first pull, in shuffled order if asked)."""

    def __init__(self, behaviour, rng, shuffle=False, num_partitions=None):
        self.behaviour = behaviour  # node id -> behaviour
        self.rng = rng
        self.shuffle = shuffle
        self.num_partitions = num_partitions or max(behaviour) + 1  # what the nodes declare
        self.waiting = {}  # message id -> reply
        self.pulls = 0

    def get_node_ids(self):
        return list(self.behaviour)

    def reply(self, message, reply_to):
        node = message.metadata.dst_node_id
        x = {k: v.numpy() for k, v in message.content["arrays"].items()}
        kind = self.behaviour[node]
        if kind == "silent":
            return None
        if kind == "error":
            return error_reply(node, reply_to)
        # Deterministic per node, like a seeded client.
        y = {k: v - 0.01 * (node + 1) * np.cos(np.arange(v.size).reshape(v.shape) * node).astype(v.dtype)
             for k, v in x.items()}
        if kind == "nan":
            y["w"][0, 0] = np.nan
        examples = 10 * node
        if kind in ("huge", "many"):
            y = {k: v + 100.0 for k, v in x.items()}
            examples = 10**15 if kind == "huge" else 50 * 10 * max(self.behaviour)
        reply = train_reply(node, y, examples, reply_to=reply_to)
        partition = int(kind.removeprefix("claims-")) if kind.startswith("claims-") else node
        if kind != "undeclared":
            reply.content[NODE_RECORD] = ConfigRecord(
                {"partition-id": partition, "num-partitions": self.num_partitions})
        return reply

    def _arrival_order(self, replies):
        return [replies[i] for i in self.rng.permutation(len(replies))] if self.shuffle else replies

    def send_and_receive(self, messages, timeout):
        replies = [self.reply(m, f"instruction-{i}") for i, m in enumerate(messages)]
        return self._arrival_order([r for r in replies if r is not None])

    def push_messages(self, messages):
        ids = [f"pushed-{len(self.waiting) + i}" for i, _ in enumerate(messages)]
        for message_id, message in zip(ids, messages):
            reply = self.reply(message, message_id)
            if reply is not None:
                self.waiting[message_id] = reply
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        return self._arrival_order([self.waiting.pop(i) for i in message_ids if i in self.waiting])


def initial():
    rng = np.random.default_rng(0)
    return global_record({"w": rng.normal(size=(3, 4)).astype(np.float32), "b": np.zeros(4, np.float32)})


@pytest.mark.parametrize("poll_interval", [None, 0.05])  # Flower's send_and_receive, or the loop's own polling
def test_faults_are_counted_and_never_reach_the_model(poll_interval):
    set_task_identity()
    grid = ScriptedGrid({1: "ok", 2: "ok", 3: "error", 4: "nan", 5: "silent"}, np.random.default_rng(1))
    loop = RoundLoop(FedGMA(min_train_nodes=1, min_available_nodes=1), grid, timeout=0.3,
                     poll_interval=poll_interval)
    arrays, outcome = loop.train_round(1, initial())
    assert (outcome.sent, outcome.failed, outcome.timed_out, outcome.dropped, outcome.used) == (5, 1, 1, 1, 2)
    assert outcome.model_updated and "non-finite" in outcome.drop_reasons[0]
    if poll_interval is not None:  # the silent node is waited for until the timeout, then given up
        assert grid.pulls >= 2 and 0.3 <= outcome.train_wait_seconds < 1.0
    clean = ScriptedGrid({1: "ok", 2: "ok"}, np.random.default_rng(1))
    expected, _ = RoundLoop(FedGMA(min_train_nodes=1, min_available_nodes=1), clean, timeout=5).train_round(
        1, initial())
    for name in ("w", "b"):
        np.testing.assert_array_equal(arrays[name].numpy(), expected[name].numpy())


def test_too_few_replies_keep_the_model():
    set_task_identity()
    grid = ScriptedGrid({1: "ok", 2: "error", 3: "silent"}, np.random.default_rng(1))
    loop = RoundLoop(FedGMA(min_train_nodes=1, min_available_nodes=1), grid, timeout=0.2, min_train_replies=2)
    start = initial()
    arrays, outcome = loop.train_round(1, start)
    assert arrays is start and not outcome.model_updated and outcome.used == 1
    assert outcome.as_row()["model-updated"] == 0 and outcome.as_row()["replies-timed-out"] == 1


@pytest.mark.parametrize("strategy", [FedGMA, FedAvgM])
def test_arrival_order_does_not_change_a_single_bit(strategy):
    set_task_identity()
    results = []
    for trial in range(4):
        grid = ScriptedGrid({n: "ok" for n in range(1, 8)}, np.random.default_rng(trial), shuffle=True)
        loop = RoundLoop(strategy(min_train_nodes=1, min_available_nodes=1), grid, timeout=5)
        arrays, _ = loop.train_round(1, initial())
        results.append(arrays["w"].numpy().tobytes())
    assert len(set(results)) == 1


def test_checkpoint_round_trip_with_fedadam_and_fedavgm_state(tmp_path):
    set_task_identity()
    config = parse_run_config(settings(strategy="fedadam"))
    for strategy in (FedAdam(eta=0.1), FedAvgM(server_momentum=0.9)):
        grid = ScriptedGrid({1: "ok", 2: "ok"}, np.random.default_rng(0))
        loop = RoundLoop(strategy, grid, timeout=5)
        arrays, _ = loop.train_round(1, initial())
        state = ckpt.strategy_state(strategy)
        assert any(v is not None for v in state.values())
        saved = ckpt.Checkpoint(1, {k: v.numpy() for k, v in arrays.items()}, state,
                                ckpt.python_rng_state(), 12.5, config.result_settings())
        ckpt.save_checkpoint(tmp_path, saved)
        loaded = ckpt.load_checkpoint(tmp_path)
        assert loaded.round == 1 and loaded.wall_seconds == 12.5 and loaded.settings_hash == saved.settings_hash
        assert loaded.rng_state == saved.rng_state
        for name, value in saved.arrays.items():
            np.testing.assert_array_equal(loaded.arrays[name], value)
        for attr, value in state.items():
            if value is None:
                assert loaded.strategy_state[attr] is None
            elif isinstance(value, dict):
                for k in value:
                    np.testing.assert_array_equal(loaded.strategy_state[attr][k], value[k])
            else:
                for a, b in zip(loaded.strategy_state[attr], value):
                    np.testing.assert_array_equal(a, b)
        fresh = type(strategy)()
        ckpt.restore_strategy_state(fresh, loaded.strategy_state)
        assert set(ckpt.strategy_state(fresh)) == set(state)


def test_resume_refuses_settings_that_change_the_result(tmp_path):
    config = parse_run_config(settings(tau=0.6, seed=3, num_server_rounds=5))
    saved = ckpt.Checkpoint(2, {"w": np.zeros(2, np.float32)}, {}, ckpt.python_rng_state(), 1.0,
                            config.result_settings())
    def check(config):
        ckpt.check_resumable(saved, config.result_settings(), config.num_server_rounds)

    check(parse_run_config(settings(tau=0.6, seed=3, num_server_rounds=9, round_timeout=30.0, run_name="x")))
    with pytest.raises(ckpt.CheckpointError, match=r"seed: 3 -> 4.*tau: 0.6 -> 0.7"):
        check(parse_run_config(settings(tau=0.7, seed=4, num_server_rounds=5)))
    with pytest.raises(ckpt.CheckpointError, match="num-server-rounds"):
        check(parse_run_config(settings(tau=0.6, seed=3, num_server_rounds=1)))


def test_a_failed_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch):
    config = parse_run_config(settings())
    good = ckpt.Checkpoint(3, {"w": np.ones(2, np.float32)}, {}, ckpt.python_rng_state(), 1.0,
                           config.result_settings())
    ckpt.save_checkpoint(tmp_path, good)

    real_atomic_write = ckpt.atomic_write

    def half_then_crash(path, write):
        def partial(handle):
            buffer = io.BytesIO()
            write(buffer)
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise OSError("disk full")
        real_atomic_write(path, partial)

    monkeypatch.setattr(ckpt, "atomic_write", half_then_crash)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, ckpt.Checkpoint(4, {"w": np.zeros(2, np.float32)}, {},
                                                       ckpt.python_rng_state(), 2.0, good.settings))
    monkeypatch.undo()
    assert ckpt.load_checkpoint(tmp_path).round == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [RunFolder(tmp_path).checkpoint.name]


def test_update_norm_and_example_bounds():
    from fedgma.strategy.validation import InvalidReply, decode_reply

    x = {"w": np.zeros((2, 2), np.float32)}
    y = {"w": np.full((2, 2), 0.5, np.float32)}  # ||x - y|| = 1.0
    content = train_reply(1, y, 10).content
    decode_reply(content, x, "num-examples", max_num_examples=10, max_update_norm=1.0)
    with pytest.raises(InvalidReply, match="update norm 1 is above the bound 0.99"):
        decode_reply(content, x, "num-examples", max_update_norm=0.99)
    with pytest.raises(InvalidReply, match="above the bound 9"):
        decode_reply(content, x, "num-examples", max_num_examples=9)
    assert decode_reply(train_reply(1, y, 2.5).content, x, "num-examples").weight == 2.5  # as FedAvg
    with pytest.raises(InvalidReply, match="positive finite number"):
        decode_reply(train_reply(1, y, float("inf")).content, x, "num-examples")


@pytest.mark.parametrize("strategy", [FedAdam, FedGMAAdam])
def test_fedadam_keeps_the_models_dtypes_so_later_rounds_use_the_replies(strategy):
    """Flower's FedAdam returns float64 arrays for a float32 model; without a cast back, every
    later float32 reply would fail the dtype check and the model would freeze."""
    set_task_identity()
    grid = ScriptedGrid({1: "ok", 2: "ok"}, np.random.default_rng(0))
    loop = RoundLoop(strategy(eta=0.01, min_train_nodes=1, min_available_nodes=1), grid, timeout=5)
    arrays = initial()
    for server_round in (1, 2, 3):
        new, outcome = loop.train_round(server_round, arrays)
        assert outcome.used == 2 and outcome.dropped == 0 and outcome.model_updated
        assert {a.dtype for a in new.values()} == {"float32"}
        assert not np.array_equal(new["w"].numpy(), arrays["w"].numpy())
        arrays = new


@pytest.mark.parametrize("liar", ["huge", "many"])
@pytest.mark.parametrize("strategy", [FedGMA, FedAvg])
def test_a_reply_claiming_too_many_examples_does_not_move_the_model(liar, strategy):
    set_task_identity()
    honest = {n: "ok" for n in range(1, 5)}
    attacked = RoundLoop(strategy(min_train_nodes=1, min_available_nodes=1),
                         ScriptedGrid({**honest, 5: liar}, np.random.default_rng(1)), timeout=5)
    arrays, outcome = attacked.train_round(1, initial())
    assert outcome.dropped == 1 and outcome.used == 4 and "median" in outcome.drop_reasons[0]
    clean = RoundLoop(strategy(min_train_nodes=1, min_available_nodes=1),
                      ScriptedGrid(honest, np.random.default_rng(1)), timeout=5)
    expected, _ = clean.train_round(1, initial())
    for name in ("w", "b"):
        np.testing.assert_array_equal(arrays[name].numpy(), expected[name].numpy())
    # With the bound off, the same reply takes the model (the attack is real).
    unbounded = RoundLoop(strategy(min_train_nodes=1, min_available_nodes=1),
                          ScriptedGrid({**honest, 5: liar}, np.random.default_rng(1)), timeout=5,
                          max_weight_ratio=None)
    if strategy is FedAvg:
        taken, _ = unbounded.train_round(1, initial())
        assert np.abs(taken["w"].numpy() - initial()["w"].numpy()).min() > 10


def test_partition_claims_out_of_range_or_taken_are_refused_and_counted():
    set_task_identity()
    # Nodes 1-4 hold partitions 1-4 (of 5); node 6 claims 99, node 7 claims 2 (node 2's).
    grid = ScriptedGrid({1: "ok", 2: "ok", 3: "ok", 4: "ok", 6: "claims-99", 7: "claims-2"},
                        np.random.default_rng(0), num_partitions=5)
    loop = RoundLoop(FedGMA(min_train_nodes=1, min_available_nodes=1), grid, timeout=5, num_partitions=5)
    _, outcome = loop.train_round(1, initial())
    # Round 1: node 7's claim on partition 2 collides with node 2's, and neither held it: both refused.
    assert outcome.dropped == 3 and outcome.used == 3
    reasons = " | ".join(outcome.drop_reasons)
    assert "node 6: partition-id 99 is out of range [0, 5)" in reasons
    assert "node 7: partition 2 is claimed by 2 nodes" in reasons and "node 2: partition 2 is claimed" in reasons
    assert outcome.as_row()["replies-dropped"] == 3
    # Round 2 without the intruder: node 2 takes partition 2; then node 7's claim is refused alone.
    grid.behaviour = {1: "ok", 2: "ok", 3: "ok", 4: "ok"}
    _, outcome = loop.train_round(2, initial())
    assert outcome.dropped == 0 and outcome.used == 4
    grid.behaviour = {1: "ok", 2: "ok", 3: "ok", 4: "ok", 7: "claims-2"}
    _, outcome = loop.train_round(3, initial())
    assert outcome.used == 4 and outcome.drop_reasons == ["node 7: partition 2 belongs to node 2"]
    # A node cannot move to another partition either.
    grid.behaviour = {1: "ok", 2: "claims-0", 3: "ok", 4: "ok"}
    _, outcome = loop.train_round(4, initial())
    assert outcome.drop_reasons == ["node 2: node 2 holds partition 2 and now claims 0"]


def test_partition_claims_against_their_own_declaration_when_the_run_sets_none():
    set_task_identity()
    # Node 3 declares partition 99 of (max node id + 1) = 5.
    grid = ScriptedGrid({1: "ok", 2: "ok", 3: "claims-99", 4: "undeclared"}, np.random.default_rng(0))
    loop = RoundLoop(FedGMA(min_train_nodes=1, min_available_nodes=1), grid, timeout=5)
    _, outcome = loop.train_round(1, initial())
    assert outcome.used == 3 and outcome.drop_reasons == ["node 3: partition-id 99 is out of range [0, 5)"]


@pytest.mark.parametrize("strategy", [FedGMA, FedAvgM])
def test_run_checkpointed_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, strategy):
    """The loop as a library API: a run stopped after round 2 and resumed from its folder ends
    with the same bits as one that ran 4 rounds straight (sampling RNG and strategy state
    restored); a new run refuses a folder that holds a checkpoint; other settings refuse to resume."""
    set_task_identity()
    behaviour = {n: "ok" for n in range(1, 6)}
    settings_ = {"seed": 3, "note": "any JSON"}

    def loop():
        return RoundLoop(strategy(fraction_train=0.6, min_train_nodes=1, min_available_nodes=1),
                         ScriptedGrid(behaviour, np.random.default_rng(0)), timeout=5, seed=3)

    rows = []
    whole = loop().run_checkpointed(initial(), 4, tmp_path / "whole", settings=settings_,
                                    after_round=lambda r, a, o: rows.append((r, o.used)))
    assert [r for r, _ in rows] == [1, 2, 3, 4] and all(used == 3 for _, used in rows)  # 60 % of 5 sampled
    loop().run_checkpointed(initial(), 2, tmp_path / "broken", settings=settings_)
    assert ckpt.load_checkpoint(tmp_path / "broken").round == 2
    with pytest.raises(ckpt.CheckpointError, match="already holds a checkpoint"):
        loop().run_checkpointed(initial(), 4, tmp_path / "broken", settings=settings_)
    with pytest.raises(ckpt.CheckpointError, match="seed: 3 -> 4"):
        ckpt.resume_point(tmp_path / "broken", {**settings_, "seed": 4}, 4)
    start = ckpt.resume_point(tmp_path / "broken", settings_, 4)
    resumed = loop().run_checkpointed(initial(), 4, tmp_path / "broken", settings=settings_, resume_from=start)
    for name in whole:
        np.testing.assert_array_equal(resumed[name].numpy(), whole[name].numpy())
    assert ckpt.load_checkpoint(tmp_path / "broken").round == 4
