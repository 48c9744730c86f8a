"""The round loop (faults, order, min-train-replies, failure, Strategy.start's arguments and
Result) and its checkpoints, without processes."""

import io
import logging
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from flower_messages import error_reply, global_record, set_task_identity, train_reply
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, Result

from fedgma.loop import RunFailed
from fedgma.loop import checkpoint as ckpt
from fedgma.loop.checkpoint import CHECKPOINT_FILE
from fedgma.loop.rounds import NODE_RECORD, RoundLoop, RoundOutcome
from fedgma.strategy import FedGMA, FedGMAAdam
from fedgma.strategy.validation import ReplyBounds

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent  # the helpers (flower_messages.py, ...)


def _number(text):
    """'300' -> 300, '1e-06' -> 1e-06: a liar's claimed example count."""
    return int(text) if text.isdigit() else float(text)


class ScriptedGrid:
    """A grid whose nodes reply as scripted: 'ok', 'error', 'nan', 'silent' (timed out), or lie:
    'huge' / 'many' / 'liar-N' (claim 10^15 examples / 50 x the others' count / N, with weights
    100 away from the model),
    'claims-N' (declares partition N), 'undeclared' (declares none). A node's partition is its id.
    'quickstart' reads its step from the train config's "lr" as Flower's quickstart client does
    (a missing "lr" fails the ClientApp with a KeyError). Evaluate messages get a loss back.
    ``seen`` records, per round, the nodes sampled and the configs they received.

    Both ways of waiting work: Flower's ``send_and_receive``, and ``push_messages`` then
    ``pull_messages`` (all replies ready at the first pull, in shuffled order if asked)."""

    def __init__(self, behaviour, rng, shuffle=False, num_partitions=None):
        self.behaviour = behaviour  # node id -> behaviour
        self.rng = rng
        self.shuffle = shuffle
        self.num_partitions = num_partitions or max(behaviour) + 1  # what the nodes declare
        self.waiting = {}  # message id -> reply
        self.pulls = 0
        self.seen = []  # (message type, server round, node, config)

    def get_node_ids(self):
        return list(self.behaviour)

    def reply(self, message, reply_to):
        node = message.metadata.dst_node_id
        config = dict(message.content["config"])
        self.seen.append((message.metadata.message_type, config["server-round"], node, config))
        x = {k: v.numpy() for k, v in message.content["arrays"].items()}
        kind = self.behaviour[node]
        if kind == "silent":
            return None
        if kind == "error":
            return error_reply(node, reply_to)
        if message.metadata.message_type == MessageType.EVALUATE:
            loss = float(sum(np.square(v).sum() for v in x.values()))
            return Message(content=RecordDict({"metrics": MetricRecord({"num-examples": 10, "eval-loss": loss})}),
                           metadata=train_reply(node, {}, 1, reply_to=reply_to).metadata)
        step = 0.01
        if kind == "quickstart":
            if "lr" not in config:
                return Message(error=Error(code=2, reason="<class 'KeyError'>:<'lr'>"),
                               metadata=error_reply(node, reply_to).metadata)
            step = config["lr"]
        # Deterministic per node, like a seeded client.
        y = {k: v - step * (node + 1) * np.cos(np.arange(v.size).reshape(v.shape) * node).astype(v.dtype)
             for k, v in x.items()}
        if kind == "nan":
            y["w"][0, 0] = np.nan
        examples = 10 * node
        if kind in ("huge", "many") or kind.startswith("liar-"):
            y = {k: v + 100.0 for k, v in x.items()}
            examples = {"huge": 10**15, "many": 50 * 10 * max(self.behaviour)}.get(kind) or _number(kind[5:])
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
        for message_id, message in zip(ids, messages, strict=True):
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


def saved_checkpoint(round_, arrays, state=None, settings_=None, **changes):
    outcome = RoundOutcome(round_, sent=2, used=2, model_updated=True, train_metrics=MetricRecord({"loss": 0.5}))
    values = dict(round=round_, arrays=arrays, strategy_state=state or {}, wall_seconds=12.5,
                  settings=settings_ or {}, identity={"strategy": {"class": "x"}},
                  history=[RoundOutcome(0).to_json(), outcome.to_json()])
    values.update(changes)
    return ckpt.Checkpoint(**values)


def test_checkpoint_round_trip_with_fedadam_and_fedavgm_state(tmp_path):
    set_task_identity()
    for strategy in (FedAdam(eta=0.1), FedAvgM(server_momentum=0.9)):
        grid = ScriptedGrid({1: "ok", 2: "ok"}, np.random.default_rng(0))
        loop = RoundLoop(strategy, grid, timeout=5)
        arrays, _ = loop.train_round(1, initial())
        state = ckpt.strategy_state(strategy)
        assert any(v is not None for v in state.values())
        saved = saved_checkpoint(1, {k: v.numpy() for k, v in arrays.items()}, state,
                                 {"strategy": "fedadam", "seed": 0}, identity=loop.identity())
        ckpt.save_checkpoint(tmp_path, saved)
        loaded = ckpt.load_checkpoint(tmp_path)
        assert loaded.round == 1 and loaded.wall_seconds == 12.5 and loaded.settings_hash == saved.settings_hash
        assert loaded.identity == loop.identity() and loaded.failure is None
        assert [RoundOutcome.from_json(r) for r in loaded.history] == [RoundOutcome.from_json(r) for r in saved.history]
        for name, value in saved.arrays.items():
            np.testing.assert_array_equal(loaded.arrays[name], value)
        for attr, value in state.items():
            if value is None:
                assert loaded.strategy_state[attr] is None
            elif isinstance(value, dict):
                for k in value:
                    np.testing.assert_array_equal(loaded.strategy_state[attr][k], value[k])
            else:
                for a, b in zip(loaded.strategy_state[attr], value, strict=True):
                    np.testing.assert_array_equal(a, b)
        fresh = type(strategy)()
        ckpt.restore_strategy_state(fresh, loaded.strategy_state)
        assert set(ckpt.strategy_state(fresh)) == set(state)


def test_a_failed_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch):
    good = saved_checkpoint(3, {"w": np.ones(2, np.float32)})
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
        ckpt.save_checkpoint(tmp_path, saved_checkpoint(4, {"w": np.zeros(2, np.float32)}))
    monkeypatch.undo()
    assert ckpt.load_checkpoint(tmp_path).round == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]


def test_a_checkpoint_from_an_earlier_version_is_refused_with_a_reason(tmp_path):
    meta = {"round": 1, "array-names": [], "state-kinds": {}, "state-keys": {}, "rng-state": None,
            "wall-seconds": 1.0, "settings": {}, "settings-hash": ""}
    with (tmp_path / CHECKPOINT_FILE).open("wb") as handle:
        np.savez(handle, meta=np.array(__import__("json").dumps(meta)))
    with pytest.raises(ckpt.CheckpointError, match="earlier version of fedgma"):
        ckpt.load_checkpoint(tmp_path)


def test_update_norm_and_weight_bounds_clip_instead_of_dropping():
    from fedgma.strategy.validation import check_replies

    x = {"w": np.zeros((2, 2), np.float32)}
    y = {"w": np.full((2, 2), 0.5, np.float32)}  # ||x - y|| = 1.0
    replies = [train_reply(1, y, 10), train_reply(2, x, 20), train_reply(3, x, 1000)]
    checked, refused = check_replies(replies, x, "num-examples", ReplyBounds(max_update_norm=0.25))
    assert not refused and len(checked) == 3
    first = checked[0]
    np.testing.assert_allclose(first.arrays["w"], np.full((2, 2), 0.125), rtol=1e-6)  # scaled to norm 0.25
    np.testing.assert_allclose(replies[0].content["arrays"]["w"].numpy(), first.arrays["w"])  # the message too
    assert first.clipped == ("update norm 1 scaled to 0.25 (max_update_norm 0.25)",)
    assert not checked[1].clipped
    # Weights: 10x the lower median (20) is 200; 1000 counts as 200, and the message says so.
    checked, refused = check_replies(replies, x, "num-examples", ReplyBounds(max_weight_ratio=10))
    assert [r.weight for r in checked] == [10, 20, 200] and not refused
    assert replies[2].content["metrics"]["num-examples"] == 200
    assert "clipped to 200 (10 x the round's lower median 20)" in checked[2].clipped[0]
    checked, _ = check_replies([train_reply(1, y, 50)], x, "num-examples", ReplyBounds(max_num_examples=9))
    assert checked[0].weight == 9
    with pytest.raises(ValueError, match="max_weight_ratio"):
        ReplyBounds(max_weight_ratio=0.5)
    with pytest.raises(ValueError, match="max_norm_ratio"):
        ReplyBounds(max_norm_ratio=0.9)
    # A bound of 0 would zero every reply's weight or update: refused when made, not at the first round.
    for name in ("max_num_examples", "max_update_norm"):
        with pytest.raises(ValueError, match=f"{name} must be None or a finite number > 0, got 0"):
            ReplyBounds(**{name: 0})


@pytest.mark.parametrize("strategy", [FedGMA, FedGMAAdam, FedAvg])
def test_the_loop_checks_each_reply_once_and_owns_the_reply_counts(strategy, monkeypatch):
    """The loop checks the replies; FedGMA (and FedGMAAdam) are handed them checked and do not
    check them again, Flower's FedAvg gets their messages. The replies-* counts are the loop's."""
    import fedgma.loop.rounds as rounds
    import fedgma.strategy.fedgma as fedgma_module

    calls = {"loop": 0, "strategy": 0}

    def counting(where, check):
        def counted(*args, **kwargs):
            calls[where] += 1
            return check(*args, **kwargs)
        return counted

    monkeypatch.setattr(rounds, "check_replies", counting("loop", rounds.check_replies))
    monkeypatch.setattr(fedgma_module, "check_replies", counting("strategy", fedgma_module.check_replies))
    set_task_identity()
    loop = RoundLoop(strategy(min_train_nodes=1, min_available_nodes=1),
                     ScriptedGrid({1: "ok", 2: "ok", 3: "nan", 4: "error"}, np.random.default_rng(1)), timeout=5)
    _, outcome = loop.train_round(1, initial())
    assert calls == {"loop": 1, "strategy": 0}
    assert (outcome.used, outcome.dropped, outcome.failed, outcome.model_updated) == (2, 1, 1, True)
    assert not any(key.startswith("replies-") for key in outcome.train_metrics or {})
    assert outcome.as_row()["replies-used"] == 2
    if strategy is not FedAvg:
        assert "mask-kept-fraction" in (outcome.train_metrics or {})
    with pytest.raises(TypeError, match="ReplyBounds"):
        RoundLoop(strategy(), loop.grid, bounds={"max_norm_ratio": 3.0})


def test_the_norm_ratio_clips_an_update_far_longer_than_the_rounds_median():
    from fedgma.strategy.validation import check_replies, update_norm

    x = {"w": np.zeros(4, np.float32)}
    honest = [np.array([0.1, -0.1, 0.0, 0.1], np.float32), np.array([0.05, 0.0, 0.1, 0.0], np.float32),
              np.array([0.0, 0.1, 0.1, 0.1], np.float32)]
    shifted = np.full(4, 50.0, np.float32)  # a liar's weights, 100 from the model
    replies = [train_reply(i + 1, {"w": w}, 10) for i, w in enumerate([*honest, shifted])]
    norms = [update_norm({"w": w}, x) for w in [*honest, shifted]]
    median = sorted(norms)[1]  # the lower median of four
    checked, refused = check_replies(replies, x, "num-examples", ReplyBounds(max_norm_ratio=3))
    assert not refused
    got = [update_norm(r.arrays, x) for r in checked]
    np.testing.assert_allclose(got[:3], norms[:3])  # honest updates untouched
    assert got[3] == pytest.approx(3 * median, rel=1e-5)  # the liar's, scaled to 3x the median
    np.testing.assert_allclose(checked[3].arrays["w"] / got[3], shifted / norms[3], rtol=1e-5)  # same direction
    assert "3 x the round's lower median norm" in checked[3].clipped[0]


def test_a_reply_with_fractional_or_bad_weight_is_read_as_fedavg_reads_it():
    from fedgma.strategy.validation import InvalidReply, decode_reply

    x = {"w": np.zeros((2, 2), np.float32)}
    y = {"w": np.full((2, 2), 0.5, np.float32)}
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
def test_a_claimed_weight_counts_in_full_by_default_and_as_the_bound_when_set(liar, strategy):
    """By default the loop takes a claim at its word, as Flower's FedAvg does; with
    max_weight_ratio = 10 a larger claim counts as 10 x the round's lower median (honest claims
    10-40 and the liar's: median 30, so 300), the same bits as a reply that claimed 300."""
    set_task_identity()
    honest = {n: "ok" for n in range(1, 5)}  # node n claims 10 n examples

    def round_with(behaviour, **options):
        loop = RoundLoop(strategy(min_train_nodes=1, min_available_nodes=1),
                         ScriptedGrid(behaviour, np.random.default_rng(1)), timeout=5, **options)
        return loop.train_round(1, initial())

    taken, outcome = round_with({**honest, 5: liar})
    assert (outcome.used, outcome.dropped, outcome.clipped) == (5, 0, 0)
    if strategy is FedAvg:  # the attack the bound exists for: the claim takes the average
        assert np.abs(taken["w"].numpy() - initial()["w"].numpy()).min() > 90
    clipped, outcome = round_with({**honest, 5: liar}, bounds=ReplyBounds(max_weight_ratio=10))
    assert (outcome.used, outcome.dropped, outcome.clipped) == (5, 0, 1)
    expected, _ = round_with({**honest, 5: "liar-300"})
    for name in ("w", "b"):
        np.testing.assert_array_equal(clipped[name].numpy(), expected[name].numpy())
    if strategy is FedAvg:  # and by hand: the liar moved everything by 100 with weight 300 of 400
        grid = ScriptedGrid({**honest, 5: "liar-300"}, np.random.default_rng(1))
        ys = [grid.reply(m, "x") for m in FedAvg(min_train_nodes=1, min_available_nodes=1).configure_train(
            1, initial(), ConfigRecord(), grid)]
        weights = np.array([r.content["metrics"]["num-examples"] for r in ys], dtype=np.float64)
        by_hand = sum(w * r.content["arrays"]["w"].numpy().astype(np.float64)
                      for w, r in zip(weights, ys, strict=True)) / weights.sum()
        np.testing.assert_allclose(clipped["w"].numpy(), by_hand, rtol=1e-5)


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
    with the same bits and the same Result as one that ran 4 rounds straight (sampling and
    strategy state restored); a new run refuses a folder that holds a checkpoint; other
    settings refuse to resume."""
    set_task_identity()
    behaviour = {n: "ok" for n in range(1, 6)}
    settings_ = {"seed": 3, "note": "any JSON"}

    def loop(grid=None):
        return RoundLoop(strategy(fraction_train=0.6, min_train_nodes=1, min_available_nodes=1),
                         grid or ScriptedGrid(behaviour, np.random.default_rng(0)), timeout=5, seed=3)

    rows = []
    straight_grid = ScriptedGrid(behaviour, np.random.default_rng(0))
    whole = loop(straight_grid).run_checkpointed(initial(), 4, tmp_path / "whole", settings=settings_,
                                                 after_round=lambda r, a, o: rows.append((r, o.used)))
    assert rows == [(0, 0), (1, 3), (2, 3), (3, 3), (4, 3)]  # 60 % of 5 sampled; round 0 is the initial model
    loop().run_checkpointed(initial(), 2, tmp_path / "broken", settings=settings_)
    assert ckpt.load_checkpoint(tmp_path / "broken").round == 2
    with pytest.raises(ckpt.CheckpointError, match="already holds a checkpoint"):
        loop().run_checkpointed(initial(), 4, tmp_path / "broken", settings=settings_)
    with pytest.raises(ckpt.CheckpointError, match="seed: 3 -> 4"):
        ckpt.resume_point(tmp_path / "broken", {**settings_, "seed": 4}, 4)
    start = ckpt.resume_point(tmp_path / "broken", settings_, 4)
    resumed_grid = ScriptedGrid(behaviour, np.random.default_rng(0))
    resumed = loop(resumed_grid).run_checkpointed(initial(), 4, tmp_path / "broken", settings=settings_,
                                                  resume_from=start)
    assert isinstance(resumed, Result) and isinstance(whole, Result)
    for name in whole.arrays:
        np.testing.assert_array_equal(resumed.arrays[name].numpy(), whole.arrays[name].numpy())
    assert ckpt.load_checkpoint(tmp_path / "broken").round == 4
    assert sorted(resumed.train_metrics_clientapp) == [1, 2, 3, 4]
    for r in (1, 2, 3, 4):
        assert dict(resumed.train_metrics_clientapp[r]) == dict(whole.train_metrics_clientapp[r])
    # The same nodes were sampled in rounds 3 and 4 as in the straight run.
    sampled = lambda grid, r: sorted(node for _, rnd, node, _ in grid.seen if rnd == r)  # noqa: E731
    assert [sampled(resumed_grid, r) for r in (3, 4)] == [sampled(straight_grid, r) for r in (3, 4)]


class QuickstartModel:
    """A stand-in for a user's app: central evaluation is the squared norm of the weights."""

    @staticmethod
    def evaluate(server_round, arrays):
        return MetricRecord({"norm": float(sum(np.square(a.numpy()).sum() for a in arrays.values())),
                             "round-seen": server_round})


def test_start_takes_strategy_starts_arguments_and_returns_its_result():
    """train_config reaches the clients (a record, or a function of the round), evaluate_config
    the evaluating ones, evaluate_fn runs before round 1 and after each round; the Result holds
    the arrays and every round's metrics, as Strategy.start's does."""
    set_task_identity()
    grid = ScriptedGrid({n: "quickstart" for n in range(1, 4)}, np.random.default_rng(0))
    strategy = FedAvg(fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
    record = ConfigRecord({"lr": 0.05})
    result = RoundLoop(strategy, grid, timeout=5).start(
        initial(), num_rounds=3, train_config=record, evaluate_config=ConfigRecord({"batch": 8}),
        evaluate_fn=QuickstartModel.evaluate)
    assert dict(record) == {"lr": 0.05}  # the caller's record is not changed
    train_seen = [(rnd, cfg["lr"]) for kind, rnd, _, cfg in grid.seen if kind == MessageType.TRAIN]
    assert train_seen == [(r, 0.05) for r in (1, 2, 3) for _ in range(3)]
    assert {cfg["batch"] for kind, _, _, cfg in grid.seen if kind == MessageType.EVALUATE} == {8}
    assert sorted(result.evaluate_metrics_serverapp) == [0, 1, 2, 3]
    assert sorted(result.train_metrics_clientapp) == [1, 2, 3]
    assert sorted(result.evaluate_metrics_clientapp) == [1, 2, 3]
    norms = [result.evaluate_metrics_serverapp[r]["norm"] for r in range(4)]
    assert norms[0] == pytest.approx(float(sum(np.square(a.numpy()).sum() for a in initial().values())))
    assert result.evaluate_metrics_serverapp[3]["norm"] == pytest.approx(
        float(sum(np.square(a.numpy()).sum() for a in result.arrays.values())))
    assert len(set(norms)) == 4  # the model moved every round
    # A function of the round: a decaying step.
    grid = ScriptedGrid({n: "quickstart" for n in range(1, 4)}, np.random.default_rng(0))
    RoundLoop(FedAvg(fraction_evaluate=0.0, min_available_nodes=1), grid, timeout=5).start(
        initial(), 2, train_config=lambda r: ConfigRecord({"lr": 0.1 / r}))
    assert sorted({(rnd, cfg["lr"]) for _, rnd, _, cfg in grid.seen}) == [(1, 0.1), (2, 0.05)]


def test_a_run_whose_every_reply_fails_ends_failed_and_says_why(tmp_path, caplog):
    """The quickstart client without "lr" in the train config: every reply is a KeyError.
    After max_failed_rounds rounds the loop raises RunFailed naming the error; the
    checkpoint records it, and a resume says so."""
    set_task_identity()
    grid = ScriptedGrid({n: "quickstart" for n in range(1, 4)}, np.random.default_rng(0))
    loop = RoundLoop(FedGMA(min_available_nodes=1), grid, timeout=5)
    rounds_seen = []
    with pytest.raises(RunFailed) as failure:
        loop.run_checkpointed(initial(), 10, tmp_path / "run", after_round=lambda r, a, o: rounds_seen.append(r))
    message = str(failure.value)
    assert "3 rounds in a row without a model update (rounds 1-3" in message
    assert "3 sent, 3 failed" in message and "KeyError" in message and "'lr'" in message
    assert rounds_seen == [0, 1, 2, 3]
    saved = ckpt.load_checkpoint(tmp_path / "run")
    assert saved.round == 3 and saved.failure == message
    # Resumed with the clients fixed (a default step): it says the run had failed, then trains.
    # (Sending another train config would be refused: it decides the result.)
    caplog.set_level(logging.WARNING)
    fixed = ScriptedGrid({n: "ok" for n in range(1, 4)}, np.random.default_rng(0))
    result = RoundLoop(FedGMA(min_available_nodes=1), fixed, timeout=5).run_checkpointed(
        initial(), 5, tmp_path / "run", resume_from=saved)
    assert "ended failed after round 3" in caplog.text
    assert sorted(result.train_metrics_clientapp) == [4, 5] and ckpt.load_checkpoint(tmp_path / "run").failure is None


# An error reply's reason as Flower's simulation sends it: Ray's traceback, with colour codes.
SIMULATED_REASON = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m "
    "(pid=26531, ip=192.0.2.2)\n  File \"client_app.py\", line 17, in train_fn\n"
    "    train_loss = train(model, data, msg.content[\"config\"][\"lr\"])\nKeyError: 'lr'\n\n"
    "The above exception was the direct cause of the following exception:\n\n"
    "\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=26531)\n  File \"ray_actor.py\", line 65, in run\n"
    "    raise ClientAppException(str(ex)) from ex\nflwr.clientapp.client_app.ClientAppException: \n"
    "Exception ClientAppException occurred. Message: 'lr''>")


def test_a_failure_reason_is_named_in_one_line():
    from fedgma.loop.outcome import short_reason

    assert short_reason(SIMULATED_REASON) == "KeyError: 'lr'"
    assert short_reason("<class 'KeyError'>:<'lr'>") == "<class 'KeyError'>:<'lr'>"  # deployed
    outcome = RoundOutcome(3, sent=2, failed=2, failure_reasons=[SIMULATED_REASON] * 2)
    assert outcome.describe() == "round 3: 2 sent, 2 failed, 0 timed out, 0 dropped, 0 usable (2 x KeyError: 'lr')"


def test_a_resume_with_another_model_is_refused_naming_the_array(tmp_path):
    set_task_identity()
    grid = ScriptedGrid({1: "ok", 2: "ok"}, np.random.default_rng(0))
    RoundLoop(FedAvg(min_available_nodes=1), grid, timeout=5).run_checkpointed(initial(), 2, tmp_path)
    wider = global_record({"w": np.zeros((3, 8), np.float32), "b": np.zeros(4, np.float32)})
    with pytest.raises(ckpt.CheckpointError, match=r"the model differs .*w: 'float32 \(3, 4\)' -> 'float32 \(3, 8\)'"):
        RoundLoop(FedAvg(min_available_nodes=1), grid, timeout=5).run_checkpointed(
            wider, 4, tmp_path, resume_from=ckpt.resume_point(tmp_path, {}, 4))


def test_max_failed_rounds_none_never_fails_and_training_skipped_is_no_failure():
    set_task_identity()
    grid = ScriptedGrid({1: "error", 2: "error"}, np.random.default_rng(0))
    result = RoundLoop(FedAvg(min_available_nodes=1), grid, timeout=5, max_failed_rounds=None).start(initial(), 5)
    assert result.train_metrics_clientapp == {}
    np.testing.assert_array_equal(result.arrays["w"].numpy(), initial()["w"].numpy())
    skipped = RoundLoop(FedAvg(fraction_train=0.0, fraction_evaluate=0.0, min_available_nodes=1),
                        ScriptedGrid({1: "ok"}, np.random.default_rng(0)), timeout=5)
    skipped.start(initial(), 4)  # Flower's "training skipped": nothing sent, nothing failed
    with pytest.raises(ValueError, match="max_failed_rounds"):
        RoundLoop(FedAvg(), grid, timeout=5, max_failed_rounds=0)


class Diverging(FedAvg):
    """A strategy whose aggregate overflows in round 2."""

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        if server_round == 2:
            arrays["w"] = type(arrays["w"])(np.full((3, 4), np.inf, np.float32))
        return arrays, metrics


def test_a_model_that_becomes_non_finite_ends_the_run_and_keeps_the_last_finite_checkpoint(tmp_path):
    set_task_identity()
    loop = RoundLoop(Diverging(min_available_nodes=1), ScriptedGrid({1: "ok", 2: "ok"}, np.random.default_rng(0)),
                     timeout=5)
    with pytest.raises(RunFailed, match=r"round 2: the aggregated model has non-finite values \(in w\)"):
        loop.run_checkpointed(initial(), 4, tmp_path)
    saved = ckpt.load_checkpoint(tmp_path)
    assert saved.round == 1 and np.isfinite(saved.arrays["w"]).all() and "non-finite" in saved.failure


def test_the_loop_leaves_the_processs_random_state_as_it_found_it():
    set_task_identity()
    random.seed(12345)
    before = random.getstate()
    grid = ScriptedGrid({n: "ok" for n in range(1, 6)}, np.random.default_rng(0))
    RoundLoop(FedGMA(fraction_train=0.6, fraction_evaluate=0.4, min_train_nodes=1, min_evaluate_nodes=1,
                     min_available_nodes=1), grid, timeout=5, seed=7).start(initial(), 3)
    assert random.getstate() == before
    # And the sampling is the run's own: another process state, the same nodes.
    random.seed(999)
    again = ScriptedGrid({n: "ok" for n in range(1, 6)}, np.random.default_rng(0))
    RoundLoop(FedGMA(fraction_train=0.6, fraction_evaluate=0.4, min_train_nodes=1, min_evaluate_nodes=1,
                     min_available_nodes=1), again, timeout=5, seed=7).start(initial(), 3)
    assert [seen[:3] for seen in again.seen] == [seen[:3] for seen in grid.seen]


def test_a_checkpoint_resumes_only_with_the_same_strategy_and_loop(tmp_path):
    """A FedGMA checkpoint resumed under FedAvg, or with another tau or seed, is refused, naming
    what differs, even with empty settings."""
    set_task_identity()
    behaviour = {1: "ok", 2: "ok"}
    RoundLoop(FedGMA(mask_tau=0.8, min_available_nodes=1), ScriptedGrid(behaviour, np.random.default_rng(0)),
              timeout=5).run_checkpointed(initial(), 2, tmp_path, train_config=ConfigRecord({"lr": 0.1}))
    saved = ckpt.resume_point(tmp_path, {}, 4)
    cases = [
        (FedAvg(min_available_nodes=1), {}, "class: 'fedgma.strategy.fedgma.FedGMA' -> "
                                             "'flwr.serverapp.strategy.fedavg.FedAvg'"),
        (FedGMA(mask_tau=0.6, min_available_nodes=1), {}, "strategy.settings.mask_tau: 0.8 -> 0.6"),
        (FedGMA(mask_tau=0.8, min_available_nodes=1), {"seed": 1}, "loop.seed: 0 -> 1"),
        (FedGMA(mask_tau=0.8, min_available_nodes=1), {"bounds": ReplyBounds(max_weight_ratio=10.0)},
         "loop.max_weight_ratio: None -> 10.0"),
    ]
    for strategy, loop_settings, difference in cases:
        loop = RoundLoop(strategy, ScriptedGrid(behaviour, np.random.default_rng(0)), timeout=5, **loop_settings)
        with pytest.raises(ckpt.CheckpointError, match="the strategy or the round loop differs") as refused:
            loop.run_checkpointed(initial(), 4, tmp_path, resume_from=saved, train_config=ConfigRecord({"lr": 0.1}))
        assert difference in str(refused.value) and str(refused.value).endswith(ckpt.AFRESH)
    loop = RoundLoop(FedGMA(mask_tau=0.8, min_available_nodes=1), ScriptedGrid(behaviour, np.random.default_rng(0)),
                     timeout=5)
    with pytest.raises(ckpt.CheckpointError, match=r"train_config.lr: 0.1 -> 0.2"):
        loop.run_checkpointed(initial(), 4, tmp_path, resume_from=saved, train_config=ConfigRecord({"lr": 0.2}))
    loop.run_checkpointed(initial(), 4, tmp_path, resume_from=saved, train_config=ConfigRecord({"lr": 0.1}))


@pytest.mark.parametrize("strategy", [FedGMA(), FedAvgM(server_momentum=0.9), FedAdam(eta=0.1), FedGMAAdam()])
def test_a_strategys_identity_does_not_change_while_it_runs(strategy):
    set_task_identity()
    strategy.min_available_nodes = strategy.min_train_nodes = 1
    before = ckpt.strategy_identity(strategy)
    RoundLoop(strategy, ScriptedGrid({1: "ok", 2: "ok"}, np.random.default_rng(0)), timeout=5).start(initial(), 3)
    assert ckpt.strategy_identity(strategy) == before
    assert before["settings"]["fraction_train"] == 1.0 and "current_arrays" not in before["settings"]


KILL_BETWEEN_CHECKPOINT_AND_REPORT = """
import os, signal, sys
import numpy as np
sys.path[:0] = [{tests!r}, {here!r}]
from flower_messages import set_task_identity
from test_rounds_and_checkpoints import ScriptedGrid, initial
from fedgma.loop import RoundLoop
from fedgma.strategy import FedGMA
set_task_identity()

def after_round(server_round, arrays, outcome):
    print(server_round, flush=True)
    if server_round == 2:  # round 2's checkpoint is written; the process dies before it is reported
        os.kill(os.getpid(), signal.SIGKILL)

RoundLoop(FedGMA(min_available_nodes=1), ScriptedGrid({{1: "ok", 2: "ok"}}, np.random.default_rng(0)),
          timeout=5).run_checkpointed(initial(), 4, {run_dir!r}, after_round=after_round)
"""


def test_a_kill_between_the_checkpoint_and_after_round_never_repeats_a_round(tmp_path):
    """after_round sees only rounds whose checkpoint is written: killed (SIGKILL) right after
    round 2's checkpoint, the resumed run reports rounds 3 and 4 only, and round 2's outcome is
    in the checkpoint's history for whatever after_round would have recorded."""
    run_dir = tmp_path / "run"
    script = KILL_BETWEEN_CHECKPOINT_AND_REPORT.format(tests=str(TESTS), here=str(HERE), run_dir=str(run_dir))
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert killed.stdout.split() == ["0", "1", "2"]
    set_task_identity()
    saved = ckpt.resume_point(run_dir, {}, 4)
    assert saved.round == 2 and [r["round"] for r in saved.history] == [0, 1, 2]
    reported = []
    RoundLoop(FedGMA(min_available_nodes=1), ScriptedGrid({1: "ok", 2: "ok"}, np.random.default_rng(0)),
              timeout=5).run_checkpointed(initial(), 4, run_dir, resume_from=saved,
                                          after_round=lambda r, a, o: reported.append(r))
    assert reported == [3, 4]
    assert [r["round"] for r in ckpt.load_checkpoint(run_dir).history] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("argument", "message"), [
    ({"seed": "x"}, "seed must be an integer, got 'x'"),
    ({"timeout": -1}, "timeout must be a finite number of seconds > 0, got -1"),
    ({"timeout": float("inf")}, "timeout must be a finite number of seconds > 0"),
    ({"poll_interval": 0}, "poll_interval must be None or a finite number of seconds > 0, got 0"),
    ({"min_train_replies": -1}, "min_train_replies must be an integer >= 0, got -1"),
    ({"min_train_replies": 1.5}, "min_train_replies must be an integer >= 0"),
    ({"max_failed_rounds": 0}, "max_failed_rounds must be None or an integer >= 1, got 0"),
    ({"num_partitions": 0}, "num_partitions must be None or an integer >= 1, got 0"),
    ({"skip_timed_out_rounds": True}, "skip_timed_out_rounds must be an integer >= 0, got True"),
])
def test_the_loop_refuses_a_bad_argument_when_made_naming_it(argument, message):
    """As FedGMA does: a bad argument is refused when the loop is made, not met as a
    TypeError in some later round."""
    with pytest.raises(ValueError, match=re.escape(f"RoundLoop: {message}")):
        RoundLoop(FedGMA(), ScriptedGrid({1: "ok"}, np.random.default_rng(0)), **argument)
    RoundLoop(FedGMA(), ScriptedGrid({1: "ok"}, np.random.default_rng(0)), seed=7, timeout=0.5, poll_interval=None,
              min_train_replies=0, max_failed_rounds=None, num_partitions=None)


@pytest.mark.parametrize(("strategy", "given"), [(FedGMA, "the class FedGMA"), ("FedGMA", "'FedGMA'")])
def test_the_loop_refuses_a_strategy_that_is_not_a_strategy_instance(strategy, given):
    """The class instead of an instance failed in round 1 as 'configure_train() missing ... grid',
    after a checkpoint of round 0 was written that then blocked the corrected app."""
    with pytest.raises(TypeError, match=re.escape(f"instance of a FedAvg-family strategy, e.g. FedGMA(...) or "
                                                  f"FedAvg(...), got {given}")):
        RoundLoop(strategy, ScriptedGrid({1: "ok"}, np.random.default_rng(0)))


def test_fedgma_refuses_a_non_boolean_agreement_weighted():
    with pytest.raises(TypeError, match="agreement_weighted must be True or False, got 'yes'"):
        FedGMA(agreement_weighted="yes")  # type: ignore[arg-type]
    assert FedGMA(agreement_weighted=np.True_).agreement_weighted is True
