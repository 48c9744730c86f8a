"""The round loop: Flower's ``Strategy.start`` plus fault handling, for any ServerApp.

:meth:`RoundLoop.start` takes what ``Strategy.start`` takes (``train_config``,
``evaluate_config``, ``evaluate_fn``) and returns what it returns (a Flower
``Result``); :meth:`RoundLoop.run_checkpointed` does the same with a checkpoint
after every round, and resumes from one. Around Flower's rounds it does what
Flower leaves to the app:

- every training reply is checked once, against the global model, before any
  strategy sees it (``fedgma.strategy.validation.check_replies``; Flower's
  baselines would otherwise end the run on one malformed reply), and bad ones are
  dropped with a log line naming the node; a strategy with ``aggregate_checked``
  (``fedgma.strategy.validation.AggregatesCheckedReplies``: FedGMA, FedGMAAdam) is
  handed the checked replies, decoded arrays included, and does not check them
  again; any other strategy gets their messages through ``aggregate_train``;
- optional bounds on a reply's claimed weight and update norm clip it (off by
  default: honest federations get FedAvg's result);
- a reply whose declared partition is out of range, claimed by another node, or
  not the one its node held (or the operator bound it to) is refused
  (``fedgma.loop.partitions``); with ``partition_sizes``, a reply's weight is the
  size of its node's partition as the server computes it, not the node's claim;
- every pull for a reply ends at the round's deadline, and a reply larger than
  the model allows is refused while it is pulled (``fedgma.loop.exchange``); a
  node that timed out can be left out of the next rounds' samples;
- a round whose model update is orders of magnitude longer than the earlier
  rounds' is flagged in the log;
- replies are put in a fixed order (by the client's partition id) so that
  floating-point sums, and therefore the weights, do not depend on arrival order;
- node sampling is seeded per round from the run's seed, without touching the
  process's own ``random`` state;
- a round with fewer usable replies than ``min_train_replies`` keeps the global
  model and says so; after ``max_failed_rounds`` rounds in a row in which the model
  did not move (that, or every update zero), or when the aggregated model is not
  finite, the run ends with :class:`RunFailed`, naming the cause;
- replies that failed, timed out, were dropped, clipped or used are counted per round
  (``RoundOutcome``; the loop owns the ``replies-*`` counts: a strategy handed
  checked replies does not count them);
- replies are pulled every ``poll_interval`` seconds (0.2 by default) instead of
  the 3 s of Flower's deployed grid (``fedgma.loop.exchange``);
- the round's parts are timed: waiting for training replies, aggregation,
  waiting for client evaluation replies, central evaluation, and, of each wait,
  the part after the newest reply was made.
"""

from __future__ import annotations

import io
import math
import random
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.supercore import log

from fedgma.strategy.validation import (
    AggregatesCheckedReplies,
    CheckedReply,
    ReplyBounds,
    all_finite,
    check_replies,
    log_adjusted,
    num_clipped,
    update_norm,
)

from .checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    CheckpointError,
    check_resumable,
    config_identity,
    mark_failed,
    restore_strategy_state,
    save_checkpoint,
    strategy_identity,
    strategy_state,
)
from .exchange import DEFAULT_POLL_INTERVAL, ReplyLimits, exchange
from .outcome import RoundOutcome, RunFailed, result_of
from .partitions import NODE_RECORD, PartitionClaims

__all__ = ["NODE_RECORD", "RoundLoop", "RoundOutcome", "RunFailed"]

AfterRound = Callable[[int, ArrayRecord, "RoundOutcome"], None]
ConfigSource = ConfigRecord | Callable[[int], ConfigRecord] | None
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]

PartitionSizes = Callable[[int, int], int]

DEFAULT_MAX_FAILED_ROUNDS = 3
# A round whose update is this many times the median of the earlier rounds' is flagged.
NORM_JUMP_FACTOR = 100.0


def keep_dtypes(new: ArrayRecord, old: ArrayRecord) -> ArrayRecord:
    """Cast the new global arrays back to the dtypes of the old ones where they differ.

    Flower's FedOpt strategies (FedAdam, FedYogi, FedAdagrad) return float64 arrays for a
    float32 model (a float64 step size times float32 arrays). The clients' replies stay
    float32, so from the next round every reply would fail the dtype check against the
    global model: the model's dtypes are the contract, and they are kept here.
    """
    if all(new[name].dtype == old[name].dtype for name in new if name in old):
        return new
    with np.errstate(over="ignore"):  # an overflow becomes inf, which the caller refuses
        return ArrayRecord({
            name: Array(np.asarray(array.numpy(), dtype=old[name].numpy().dtype)) if name in old else array
            for name, array in new.items()
        })


def round_seed(seed: int, server_round: int) -> int:
    return seed * 1_000_003 + server_round


@contextmanager
def seeded_random(seed: int | str) -> Iterator[None]:
    """Seed Python's ``random`` (Flower samples nodes with it) for the block, then put the
    process's own state back."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def config_for(source: ConfigSource, server_round: int) -> ConfigRecord:
    """The round's config: a copy of a ``ConfigRecord`` (the strategy adds ``server-round``
    to what it is given), or what a function of the round returns; empty for None."""
    if source is None:
        return ConfigRecord()
    if callable(source):
        record = source(server_round)
        if not isinstance(record, ConfigRecord):
            raise TypeError(f"a config function must return a ConfigRecord, got {type(record).__name__} "
                            f"for round {server_round}")
        return record
    return ConfigRecord(dict(source))


def _check_integer(name: str, value: object, low: int | None, may_be: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        raise ValueError(f"RoundLoop: {name} must be {may_be}an integer{'' if low is None else f' >= {low}'}, "
                         f"got {value!r}")


@dataclass
class RoundLoop:
    """Runs the rounds of a FedAvg-family strategy on a grid, as ``Strategy.start`` does,
    with the checks, bounds, timeouts and checkpoints listed in this module's docstring.

    Parameters
    ----------
    strategy : FedAvg
        Any of Flower's FedAvg-family strategies (FedGMA included). One with
        ``aggregate_checked`` (FedGMA, FedGMAAdam) gets the replies the loop checked
        as they are; any other gets their messages through ``aggregate_train``.
    grid : Grid
    timeout : float (default: 3600)
        Seconds to wait for one round's replies; a dead node costs at most this.
    min_train_replies : int (default: 1)
        Fewer usable training replies than this keep the global model for the round.
    seed : int (default: 0)
        Seeds node sampling per round.
    bounds : Optional[ReplyBounds] (default: None)
        Bounds on each training reply's weight and update norm, which clip it
        (``fedgma.strategy.validation.ReplyBounds``). None: no bound, as in FedAvg.
    num_partitions : Optional[int]
        Partitions in the federation, bounding the ``partition-id`` a reply may
        declare; None: each reply's own ``num-partitions``.
    partition_sizes : Optional[Callable[[int, int], int]] (default: None)
        ``partition_sizes(partition_id, num_partitions)``: the number of examples the
        server knows that partition holds (e.g. computed from the partitioner and its
        seed). Given, each reply's weight is its node's partition size, not its claim:
        a claim that differs is logged and counted (``replies-corrected``), and a reply
        whose node holds no known partition is dropped. None: the claims are the
        weights, as in FedAvg.
    partition_bindings : Optional[Mapping[int, int]] (default: None)
        Node id -> partition id, from the server's operator: a node holds the
        partition it is bound to, and a node without a binding is refused. None:
        a node is bound to the first partition it is accepted with.
    skip_timed_out_rounds : int (default: 0)
        A node that did not reply (or finish uploading its reply) by the deadline is
        not sampled for this many rounds (logged), so it cannot make every round wait
        for the timeout; it is sampled anyway where too few other nodes are
        connected. 0: sampled as usual, as in Flower.
    poll_interval : Optional[float] (default: 0.2)
        Seconds between two pulls for replies; None: the grid's own
        ``send_and_receive`` (Flower 1.39 deployed: 3 s).
    max_failed_rounds : Optional[int] (default: 3)
        After this many rounds in a row in which training was asked for and the model
        did not move (no usable reply, fewer than ``min_train_replies``, or every update
        zero, as when a model has diverged to constant predictions), the run ends with
        :class:`RunFailed`, naming what the replies said. None: never.
    """

    strategy: FedAvg
    grid: Grid
    timeout: float = 3600.0
    min_train_replies: int = 1
    seed: int = 0
    bounds: ReplyBounds | None = None
    num_partitions: int | None = None
    poll_interval: float | None = DEFAULT_POLL_INTERVAL
    max_failed_rounds: int | None = DEFAULT_MAX_FAILED_ROUNDS
    partition_sizes: PartitionSizes | None = None
    partition_bindings: Mapping[int, int] | None = None
    skip_timed_out_rounds: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, FedAvg):
            given = f"the class {self.strategy.__name__}" if isinstance(self.strategy, type) else repr(self.strategy)
            raise TypeError(f"RoundLoop: strategy must be an instance of a FedAvg-family strategy, e.g. "
                            f"FedGMA(...) or FedAvg(...), got {given}"[:300])
        for name, low in (("skip_timed_out_rounds", 0), ("min_train_replies", 0), ("seed", None)):
            _check_integer(name, getattr(self, name), low)
        for name in ("max_failed_rounds", "num_partitions"):
            if getattr(self, name) is not None:
                _check_integer(name, getattr(self, name), 1, "None or ")
        for name in ("timeout", "poll_interval"):
            value = getattr(self, name)
            if value is None and name == "poll_interval":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"RoundLoop: {name} must be {'None or ' if name == 'poll_interval' else ''}"
                                 f"a finite number of seconds > 0, got {value!r}")
        self.claims = PartitionClaims(self.num_partitions, self.partition_bindings)
        self._bounds = ReplyBounds.coerce(self.bounds)
        self.resting: dict[int, int] = {}  # node id -> the last round it is left out of
        self.update_norms: list[float] = []  # of the rounds that moved the model

    # --- one round -----------------------------------------------------------------

    def _drop(self, server_round: int, message: Message, problem: str, outcome: RoundOutcome) -> None:
        reason = f"node {message.metadata.src_node_id}: {problem}"
        log(WARNING, "Round %s: dropped a training reply (%s)", server_round, reason)
        outcome.drop_reasons.append(reason)

    def check_replies(self, server_round: int, replies: list[Message], global_arrays: dict[str, np.ndarray],
                      outcome: RoundOutcome) -> list[CheckedReply]:
        """The replies that may reach the strategy, checked and in a fixed order; the others are
        logged and their reasons kept in ``outcome``."""
        accepted, refused = self.claims.check(replies)
        if self.partition_sizes is not None:
            accepted, unknown = self._vouch_weights(server_round, accepted, outcome)
            refused += unknown
        for message, problem in refused:
            self._drop(server_round, message, problem, outcome)
        checked, refused = check_replies(sorted(accepted, key=self.claims.order), global_arrays,
                                         self.strategy.weighted_by_key, self._bounds)
        for message, problem in refused:
            self._drop(server_round, message, problem, outcome)
        log_adjusted(f"Round {server_round}", checked)
        outcome.clipped = num_clipped(checked)
        return checked

    def aggregate(self, server_round: int, checked: list[CheckedReply]
                  ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Hand the checked replies to the strategy: as they are to ``aggregate_checked``, or
        their (clipped) messages to Flower's ``aggregate_train``."""
        if isinstance(self.strategy, AggregatesCheckedReplies):
            return self.strategy.aggregate_checked(server_round, checked)
        return self.strategy.aggregate_train(server_round, [reply.message for reply in checked])

    def _vouch_weights(self, server_round: int, replies: list[Message], outcome: RoundOutcome
                       ) -> tuple[list[Message], list[tuple[Message, str]]]:
        """Set each reply's weight to its node's partition size (``partition_sizes``); a
        reply whose partition the server does not know is refused."""
        assert self.partition_sizes is not None
        key = self.strategy.weighted_by_key
        vouched: list[Message] = []
        refused: list[tuple[Message, str]] = []
        for message in replies:
            place = self.claims.place(message)
            if place is None:
                refused.append((message, "declares no partition (partition-id, num-partitions): the server "
                                         "cannot vouch for its weight"))
                continue
            metric_records = list(message.content.metric_records.values())
            if len(metric_records) != 1:
                vouched.append(message)  # malformed: check_replies says why
                continue
            known = self.partition_sizes(*place)
            claimed = metric_records[0].get(key)
            if claimed != known:
                log(WARNING, "Round %s: node %s claims %s=%r; its partition %s of %s holds %s: that is its "
                    "weight", server_round, message.metadata.src_node_id, key, claimed, *place, known)
                metric_records[0][key] = known
                outcome.corrected += 1
            vouched.append(message)
        return vouched, refused

    def _sampled_grid(self, server_round: int) -> Grid:
        """The grid as the strategy samples it: without the nodes resting after a timeout."""
        resting = {node for node, until in self.resting.items() if until >= server_round}
        if not resting:
            return self.grid
        need = max(int(getattr(self.strategy, "min_available_nodes", 0)),
                   int(getattr(self.strategy, "min_train_nodes", 0)), 1)
        # A proxy, not a Grid subclass: every other attribute is the grid's own.
        return cast(Grid, _WithoutNodes(self.grid, resting, need, server_round))

    def _rest(self, server_round: int, nodes: list[int]) -> None:
        """Leave ``nodes`` (timed out this round) out of the next ``skip_timed_out_rounds`` samples."""
        if not self.skip_timed_out_rounds or not nodes:
            return
        for node in nodes:
            self.resting[node] = server_round + self.skip_timed_out_rounds
        log(WARNING, "Round %s: node(s) %s timed out: not sampled in rounds %s-%s (skip_timed_out_rounds=%s)",
            server_round, ", ".join(map(str, sorted(nodes))), server_round + 1,
            server_round + self.skip_timed_out_rounds, self.skip_timed_out_rounds)

    def _flag_norm_jump(self, server_round: int, norm: float, outcome: RoundOutcome) -> None:
        """Flag (log, ``outcome.warnings``) an update far longer than the earlier rounds' median."""
        earlier = self.update_norms[-10:]
        if earlier:
            median = statistics.median(earlier)
            if median > 0 and norm > NORM_JUMP_FACTOR * median:
                warning = (f"the model's update norm {norm:.4g} is {norm / median:.3g} x the median of the "
                           f"earlier rounds' ({median:.4g}): a client or the server step may be pushing the "
                           "model away")
                outcome.warnings.append(warning)
                log(WARNING, "Round %s: %s", server_round, warning)
        self.update_norms.append(norm)

    def train_round(self, server_round: int, arrays: ArrayRecord,
                    config: ConfigRecord | None = None) -> tuple[ArrayRecord, RoundOutcome]:
        """One training round with ``config`` sent to the clients; returns the new (or
        unchanged) global arrays.

        Raises
        ------
        RunFailed
            If the aggregated model has non-finite values (the run diverged).
        """
        outcome = RoundOutcome(server_round)
        current = {name: array.numpy() for name, array in arrays.items()}
        with seeded_random(round_seed(self.seed, server_round)):
            messages = list(self.strategy.configure_train(server_round, arrays, config or ConfigRecord(),
                                                          self._sampled_grid(server_round)))
        outcome.sent = len(messages)
        received = exchange(self.grid, messages, self.timeout, self.poll_interval,
                            ReplyLimits.for_model(current.values()))
        replies = received.replies
        outcome.train_wait_seconds, outcome.train_reply_lag_seconds = received.wait_seconds, received.last_reply_lag
        unavailable = received.unavailable()  # not uploaded by the deadline, or larger than the model allows
        outcome.timed_out = max(outcome.sent - len(replies), 0) + len(unavailable)
        answered = [m for m in replies if not m.has_error()]
        outcome.failed = len(replies) - len(answered) - len(unavailable)
        for message in replies:
            if message.has_error():
                reason = f"node {received.node_of(message)}: {message.error.reason}"
                outcome.failure_reasons.append(str(message.error.reason))
                log(WARNING, "Round %s: a node's training reply failed: %s", server_round, reason)
        self._rest(server_round, received.unanswered + [received.node_of(m) for m in unavailable])
        usable = self.check_replies(server_round, answered, current, outcome)
        outcome.dropped = len(answered) - len(usable)
        outcome.used = len(usable)
        if outcome.timed_out:
            log(WARNING, "Round %s: %s of %s nodes did not reply (or finish uploading) within %.0f s",
                server_round, outcome.timed_out, outcome.sent, self.timeout)
        if len(usable) < max(self.min_train_replies, 1):
            outcome.kept_because = f"fewer usable replies than min_train_replies={self.min_train_replies}"
            if outcome.sent:
                log(WARNING, "Round %s: %s usable replies, fewer than min_train_replies=%s: "
                    "the global model is kept", server_round, len(usable), self.min_train_replies)
            return arrays, outcome
        aggregate_start = time.perf_counter()
        new_arrays, metrics = self.aggregate(server_round, usable)
        outcome.aggregate_seconds = time.perf_counter() - aggregate_start
        outcome.train_metrics = metrics
        if metrics is not None:
            log(INFO, "\t└──> Aggregated MetricRecord: %s", metrics)
        if new_arrays is None:
            outcome.kept_because = "the strategy returned no model"
            log(WARNING, "Round %s: the strategy returned no model: the global model is kept", server_round)
            return arrays, outcome
        new_arrays = keep_dtypes(new_arrays, arrays)
        new = {name: array.numpy() for name, array in new_arrays.items()}
        diverged = [name for name, value in new.items() if not all_finite(value)]
        if diverged:
            raise RunFailed(
                f"round {server_round}: the aggregated model has non-finite values (in {', '.join(diverged)}): "
                "the run diverged (a learning rate or server step too large?); the global model of round "
                f"{server_round - 1} is the last finite one"
            )
        if new.keys() == current.keys() and all(np.array_equal(value, current[name]) for name, value in new.items()):
            # Every update was zero: training has stopped (a model diverged to constant
            # predictions, or clients that return what they were sent).
            outcome.kept_because = "the aggregated model equals the previous one: every update was zero"
            log(WARNING, "Round %s: %s", server_round, outcome.kept_because)
            return arrays, outcome
        outcome.model_updated = True
        outcome.update_norm = update_norm(new, current)
        self._flag_norm_jump(server_round, outcome.update_norm, outcome)
        return new_arrays, outcome

    def evaluate_round(self, server_round: int, arrays: ArrayRecord, outcome: RoundOutcome,
                       config: ConfigRecord | None = None) -> None:
        """Client-side evaluation with ``config``, when the strategy samples any node for it."""
        with seeded_random(f"evaluate-{self.seed}-{server_round}"):
            messages = list(self.strategy.configure_evaluate(server_round, arrays, config or ConfigRecord(),
                                                             self._sampled_grid(server_round)))
        if not messages:
            return
        received = exchange(self.grid, messages, self.timeout, self.poll_interval,
                            ReplyLimits.for_model(array.numpy() for array in arrays.values()))
        self._rest(server_round, received.unanswered + [received.node_of(m) for m in received.unavailable()])
        outcome.evaluate_wait_seconds = received.wait_seconds
        outcome.evaluate_reply_lag_seconds = received.last_reply_lag
        try:
            outcome.evaluate_metrics = self.strategy.aggregate_evaluate(server_round, received.replies)
        except Exception as err:  # evaluation replies never touch the model: log and go on
            log(WARNING, "Round %s: client evaluation replies could not be aggregated: %s", server_round, err)
        if outcome.evaluate_metrics is not None:
            log(INFO, "\t└──> Aggregated MetricRecord: %s", outcome.evaluate_metrics)

    @staticmethod
    def central_evaluate(server_round: int, arrays: ArrayRecord, outcome: RoundOutcome,
                         evaluate_fn: EvaluateFn | None) -> None:
        """``evaluate_fn(server_round, arrays)``, timed, into ``outcome.central_metrics``."""
        if evaluate_fn is None:
            return
        started = time.perf_counter()
        metrics = evaluate_fn(server_round, arrays)
        outcome.central_eval_seconds = time.perf_counter() - started
        if metrics is not None and not isinstance(metrics, MetricRecord):
            raise TypeError(f"evaluate_fn must return a MetricRecord or None, got {type(metrics).__name__}")
        outcome.central_metrics = metrics
        log(INFO, "Global evaluation, round %s: %s", server_round, metrics)

    # --- whole runs ------------------------------------------------------------------

    def identity(self, train_config: ConfigSource = None, evaluate_config: ConfigSource = None) -> dict[str, Any]:
        """What decides this run's result besides the caller's settings: the strategy's class
        and settings, the loop's own, and the configs sent to the clients (a checkpoint keeps
        it; a run resumes only with the same)."""
        return {
            "strategy": strategy_identity(self.strategy),
            "loop": {"seed": self.seed, "min_train_replies": self.min_train_replies,
                     "num_partitions": self.num_partitions, **{
                         name: getattr(self._bounds, name)
                         for name in ("max_num_examples", "max_update_norm", "max_weight_ratio", "max_norm_ratio")},
                     "vouched_weights": self.partition_sizes is not None},
            "train_config": config_identity(train_config),
            "evaluate_config": config_identity(evaluate_config),
        }

    def start(
        self,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        train_config: ConfigSource = None,
        evaluate_config: ConfigSource = None,
        evaluate_fn: EvaluateFn | None = None,
        *,
        after_round: AfterRound | None = None,
    ) -> Result:
        """Run ``num_rounds`` rounds, as ``Strategy.start`` does; returns Flower's ``Result``.

        ``train_config`` and ``evaluate_config`` are sent to the clients: a
        ``ConfigRecord``, or a function of the round that returns one (for values that
        change, e.g. a decaying learning rate). ``evaluate_fn(server_round, arrays)``
        evaluates the global model centrally, before the first round (round 0) and after
        each round. ``after_round(server_round, arrays, outcome)``, if given, is called
        after each round, round 0 included (to record it).

        Raises
        ------
        RunFailed
            After ``max_failed_rounds`` rounds in a row without a model update, or when
            the model becomes non-finite.
        """
        clock = _Clock(0.0)
        outcome = RoundOutcome(0)
        self.central_evaluate(0, initial_arrays, outcome, evaluate_fn)
        outcome.wall_seconds = clock()
        history = [outcome]
        if after_round is not None:
            after_round(0, initial_arrays, outcome)
        return self._rounds(initial_arrays, 1, num_rounds, train_config, evaluate_config, evaluate_fn,
                            history, clock, after_round)

    def run_checkpointed(
        self,
        initial_arrays: ArrayRecord,
        num_rounds: int,
        run_dir: Path,
        *,
        settings: dict[str, Any] | None = None,
        resume_from: Checkpoint | None = None,
        train_config: ConfigSource = None,
        evaluate_config: ConfigSource = None,
        evaluate_fn: EvaluateFn | None = None,
        after_round: AfterRound | None = None,
    ) -> Result:
        """:meth:`start`, with a checkpoint in ``run_dir`` after every round.

        A new run (``resume_from`` None) refuses a ``run_dir`` that holds a checkpoint
        already, and checkpoints the initial ``initial_arrays`` as round 0 first, so a run
        killed in round 1 can resume too. ``resume_from`` (see
        :func:`fedgma.loop.resume_point`) continues after its round: its global arrays
        replace ``initial_arrays``, and the strategy's cross-round state and the rounds'
        history are restored, so the rounds that follow, and the ``Result``, are those an
        uninterrupted run would have made. It is refused, naming the differences, when the
        model (``initial_arrays``: names, dtypes, shapes), the strategy, the loop's settings,
        a ``ConfigRecord`` config or ``settings`` (JSON values the caller says decide the
        result, e.g. what a config function depends on) differ from the checkpoint's. A run
        that ended failed says so when resumed.

        Each round's checkpoint is written before ``after_round`` sees the round, so a
        crash between the two never repeats a round; the checkpoint keeps every round's
        outcome (``Result.*`` metrics, counts, timings) for whatever ``after_round`` records.
        When the run fails (:class:`RunFailed`), the checkpoint records why.
        """
        folder = Path(run_dir)
        checkpoint_file = folder / CHECKPOINT_FILE
        folder.mkdir(parents=True, exist_ok=True)
        settings = dict(settings or {})
        identity = self.identity(train_config, evaluate_config)
        if resume_from is None:
            if checkpoint_file.exists():
                raise CheckpointError(f"{folder} already holds a checkpoint: resume from it, "
                                      "or choose another folder")
            arrays, first_round, clock = initial_arrays, 1, _Clock(0.0)
            history: list[RoundOutcome] = []
        else:
            check_resumable(resume_from, settings, num_rounds, identity, model=initial_arrays)
            if resume_from.failure:
                log(WARNING, "Round loop: the run in %s ended failed after round %s (%s); resuming it",
                    folder, resume_from.round, resume_from.failure)
            arrays = ArrayRecord({name: Array(value) for name, value in resume_from.arrays.items()})
            restore_strategy_state(self.strategy, resume_from.strategy_state)
            first_round, clock = resume_from.round + 1, _Clock(resume_from.wall_seconds)
            history = [RoundOutcome.from_json(record) for record in resume_from.history]
            self.update_norms = [o.update_norm for o in history if o.update_norm is not None]
            released = self.claims.restore(resume_from.partitions, self.grid.get_node_ids())
            if released:
                log(WARNING, "Round loop: node(s) %s held partitions before the resume and are not connected "
                    "now: their partitions go to the first node that claims them", ", ".join(map(str, released)))
            log(INFO, "Round loop: resuming after round %s from %s", resume_from.round, checkpoint_file)

        def checkpoint_then_report(server_round: int, new_arrays: ArrayRecord, outcome: RoundOutcome) -> None:
            save_checkpoint(folder, Checkpoint(
                round=server_round,
                arrays={name: array.numpy() for name, array in new_arrays.items()},
                strategy_state=strategy_state(self.strategy),
                wall_seconds=outcome.wall_seconds,
                settings=settings,
                identity=identity,
                history=[record.to_json() for record in history],
                partitions=dict(self.claims.held),
            ))
            if after_round is not None:
                after_round(server_round, new_arrays, outcome)

        try:
            if resume_from is None:
                outcome = RoundOutcome(0)
                self.central_evaluate(0, arrays, outcome, evaluate_fn)
                outcome.wall_seconds = clock()
                history.append(outcome)
                checkpoint_then_report(0, arrays, outcome)
            return self._rounds(arrays, first_round, num_rounds, train_config, evaluate_config, evaluate_fn,
                                history, clock, checkpoint_then_report)
        except RunFailed as failure:
            mark_failed(folder, str(failure))
            raise

    def _rounds(self, arrays: ArrayRecord, first_round: int, num_rounds: int, train_config: ConfigSource,
                evaluate_config: ConfigSource, evaluate_fn: EvaluateFn | None, history: list[RoundOutcome],
                clock: _Clock, on_round: AfterRound | None) -> Result:
        """Rounds ``first_round .. num_rounds``, each appended to ``history`` and passed to
        ``on_round``; then the failure rule. Returns the ``Result`` of the whole history."""
        for server_round in range(first_round, num_rounds + 1):
            log(INFO, "")
            log(INFO, "[ROUND %s/%s]", server_round, num_rounds)
            started = time.monotonic()
            arrays, outcome = self.train_round(server_round, arrays, config_for(train_config, server_round))
            self.evaluate_round(server_round, arrays, outcome, config_for(evaluate_config, server_round))
            self.central_evaluate(server_round, arrays, outcome, evaluate_fn)
            outcome.round_seconds = time.monotonic() - started
            outcome.wall_seconds = clock()
            history.append(outcome)
            if on_round is not None:
                on_round(server_round, arrays, outcome)
            self._check_progress(history)
        result = result_of(arrays, history)
        log(INFO, "")
        log(INFO, "Round loop: %s rounds finished in %.2f s", num_rounds, clock())
        for line in io.StringIO(str(result)):
            log(INFO, "\t%s", line.rstrip("\n"))
        return result

    def _check_progress(self, history: list[RoundOutcome]) -> None:
        """Raise :class:`RunFailed` after ``max_failed_rounds`` stalled rounds in a row."""
        if self.max_failed_rounds is None:
            return
        stalled = 0
        for outcome in reversed(history):
            if not outcome.stalled:
                break
            stalled += 1
        if stalled >= self.max_failed_rounds:
            last = history[-1]
            raise RunFailed(
                f"{stalled} rounds in a row without a model update (rounds {last.round - stalled + 1}-"
                f"{last.round}; max_failed_rounds={self.max_failed_rounds}, min_train_replies="
                f"{self.min_train_replies}): {last.describe()}"
            )


class _Clock:
    """Seconds since the run started, continuing a resumed run's ``elapsed``."""

    def __init__(self, elapsed: float) -> None:
        self.started = time.monotonic() - elapsed

    def __call__(self) -> float:
        return time.monotonic() - self.started


class _WithoutNodes:
    """A grid whose ``get_node_ids`` leaves out resting nodes, for the strategy's sampling
    only; where fewer than ``need`` others are connected it leaves none out (Flower's
    sampling would otherwise wait for more nodes forever)."""

    def __init__(self, grid: Grid, resting: set[int], need: int, server_round: int) -> None:
        self._grid, self._resting, self._need, self._round = grid, resting, need, server_round

    def get_node_ids(self) -> list[int]:
        every = list(self._grid.get_node_ids())
        available = [node for node in every if node not in self._resting]
        if len(available) < self._need:
            log(WARNING, "Round %s: only %s nodes besides the resting ones (%s needed): the resting are "
                "sampled too", self._round, len(available), self._need)
            return every
        return available

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)
