"""The round loop: Flower's ``Strategy.start`` plus fault handling, for any ServerApp.

It does what ``Strategy.start`` does (configure, send and receive, aggregate,
evaluate) and, around it, what Flower leaves to the app:

- it checkpoints after every round and resumes from a checkpoint
  (:meth:`RoundLoop.run_checkpointed`), or starts at any round (:meth:`RoundLoop.run`);
- every training reply is checked once, against the global model, before any
  strategy sees it (``fedgma.strategy.validation.check_replies``; Flower's
  baselines would otherwise end the run on one malformed reply), and bad ones are
  dropped with a log line naming the node; FedGMA takes the checked arrays as they
  are instead of checking the replies again;
- a reply whose declared partition is out of range, claimed by another node, or
  not the one its node held before is refused (``fedgma.loop.partitions``);
- a reply claiming more than ``max-weight-ratio`` times the round's median number
  of examples is dropped, so one client cannot take the average by lying;
- replies are put in a fixed order (by the client's partition id) so that
  floating-point sums, and therefore the weights, do not depend on arrival order;
- node sampling is seeded per round from the run's seed;
- a round with fewer usable replies than ``min-train-replies`` keeps the
  global model and says so;
- replies that failed, timed out or were dropped are counted per round;
- replies are pulled every ``poll_interval`` seconds (0.2 by default) instead of
  the 3 s of Flower's deployed grid (``fedgma.loop.exchange``);
- the round's parts are timed: waiting for training replies, aggregation,
  waiting for client evaluation replies, and, of each wait, the part after the
  newest reply was made.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from fedgma.strategy.validation import DEFAULT_MAX_WEIGHT_RATIO, ReplyBounds, check_replies

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    python_rng_state,
    restore_python_rng,
    restore_strategy_state,
    save_checkpoint,
    strategy_state,
)
from .exchange import DEFAULT_POLL_INTERVAL, exchange
from .partitions import NODE_RECORD, PartitionClaims
from .run_folder import RunFolder

__all__ = ["NODE_RECORD", "RoundLoop", "RoundOutcome"]

AfterRound = Callable[[int, ArrayRecord, "RoundOutcome"], None]


@dataclass
class RoundOutcome:
    """What happened in one round (counts of replies, and whether the model moved)."""

    round: int
    sent: int = 0
    failed: int = 0
    timed_out: int = 0
    dropped: int = 0
    used: int = 0
    model_updated: bool = False
    train_wait_seconds: float = 0.0
    aggregate_seconds: float = 0.0
    evaluate_wait_seconds: float = 0.0
    train_reply_lag_seconds: float | None = None
    evaluate_reply_lag_seconds: float | None = None
    train_metrics: MetricRecord | None = None
    evaluate_metrics: MetricRecord | None = None
    drop_reasons: list[str] = field(default_factory=list)

    def as_row(self) -> dict[str, float | int]:
        row: dict[str, float | int] = dict(self.train_metrics or {})
        for key, value in (self.evaluate_metrics or {}).items():
            row[f"client-{key}"] = value
        row.update({
            "replies-sent": self.sent,
            "replies-failed": self.failed,
            "replies-timed-out": self.timed_out,
            "replies-dropped": self.dropped,
            "replies-used": self.used,
            "model-updated": int(self.model_updated),
            "train-wait-seconds": round(self.train_wait_seconds, 4),
            "aggregate-seconds": round(self.aggregate_seconds, 4),
            "client-eval-wait-seconds": round(self.evaluate_wait_seconds, 4),
        })
        # Seconds from the newest reply's creation to the server holding it (empty without replies).
        for key, lag in (("train-reply-lag-seconds", self.train_reply_lag_seconds),
                         ("client-eval-reply-lag-seconds", self.evaluate_reply_lag_seconds)):
            row[key] = "" if lag is None else round(lag, 4)
        return row


def keep_dtypes(new: ArrayRecord, old: ArrayRecord) -> ArrayRecord:
    """Cast the new global arrays back to the dtypes of the old ones where they differ.

    Flower's FedOpt strategies (FedAdam, FedYogi, FedAdagrad) return float64 arrays for a
    float32 model (a float64 step size times float32 arrays). The clients' replies stay
    float32, so from the next round every reply would fail the dtype check against the
    global model: the model's dtypes are the contract, and they are kept here.
    """
    if all(new[name].dtype == old[name].dtype for name in new if name in old):
        return new
    return ArrayRecord({
        name: Array(np.asarray(array.numpy(), dtype=old[name].numpy().dtype)) if name in old else array
        for name, array in new.items()
    })


def round_seed(seed: int, server_round: int) -> int:
    return seed * 1_000_003 + server_round


@dataclass
class RoundLoop:
    """Runs rounds ``first_round .. num_rounds`` of a strategy on a grid.

    Parameters
    ----------
    strategy : FedAvg
        Any of Flower's FedAvg-family strategies (FedGMA included).
    grid : Grid
    timeout : float
        Seconds to wait for one round's replies; a dead node costs at most this.
    min_train_replies : int
        Fewer usable training replies than this keep the global model.
    seed : int
        Seeds node sampling per round.
    max_num_examples, max_update_norm : Optional[float]
        Bounds a reply must respect (see ``decode_reply``).
    max_weight_ratio : Optional[float]
        Replies claiming more than this many times the round's median weight are
        dropped (see ``weight_outliers``); None: no bound.
    num_partitions : Optional[int]
        Partitions in the federation, bounding the ``partition-id`` a reply may
        declare; None: each reply's own ``num-partitions``.
    poll_interval : Optional[float]
        Seconds between two pulls for replies; None: the grid's own
        ``send_and_receive`` (Flower 1.39 deployed: 3 s).
    """

    strategy: FedAvg
    grid: Grid
    timeout: float
    min_train_replies: int = 1
    seed: int = 0
    max_num_examples: float | None = None
    max_update_norm: float | None = None
    max_weight_ratio: float | None = DEFAULT_MAX_WEIGHT_RATIO
    num_partitions: int | None = None
    poll_interval: float | None = DEFAULT_POLL_INTERVAL

    def __post_init__(self) -> None:
        self.claims = PartitionClaims(self.num_partitions)
        self.bounds = ReplyBounds(self.max_num_examples, self.max_update_norm, self.max_weight_ratio)

    def _drop(self, server_round: int, message: Message, problem: str, outcome: RoundOutcome) -> None:
        reason = f"node {message.metadata.src_node_id}: {problem}"
        log(WARNING, "Round %s: dropped a training reply (%s)", server_round, reason)
        outcome.drop_reasons.append(reason)

    def check_replies(self, server_round: int, replies: list[Message], arrays: ArrayRecord,
                      outcome: RoundOutcome) -> list[Message]:
        """The replies that may reach the strategy, in a fixed order; the others are logged."""
        accepted, refused = self.claims.check(replies)
        for message, problem in refused:
            self._drop(server_round, message, problem, outcome)
        global_arrays = {name: array.numpy() for name, array in arrays.items()}
        checked, refused = check_replies(sorted(accepted, key=self.claims.order), global_arrays,
                                         self.strategy.weighted_by_key, self.bounds)
        for message, problem in refused:
            self._drop(server_round, message, problem, outcome)
        for reply in checked.checked:
            if reply.cast:
                log(WARNING, "Round %s: node %s's reply was cast to the model's dtypes (%s)",
                    server_round, reply.message.metadata.src_node_id, "; ".join(reply.cast))
        return checked

    def train_round(self, server_round: int, arrays: ArrayRecord) -> tuple[ArrayRecord, RoundOutcome]:
        """One training round; returns the new (or unchanged) global arrays."""
        outcome = RoundOutcome(server_round)
        random.seed(round_seed(self.seed, server_round))  # Flower samples nodes with `random`
        messages = list(self.strategy.configure_train(server_round, arrays, ConfigRecord(), self.grid))
        outcome.sent = len(messages)
        received = exchange(self.grid, messages, self.timeout, self.poll_interval)
        replies = received.replies
        outcome.train_wait_seconds, outcome.train_reply_lag_seconds = received.wait_seconds, received.last_reply_lag
        outcome.timed_out = max(outcome.sent - len(replies), 0)
        answered = [m for m in replies if not m.has_error()]
        outcome.failed = len(replies) - len(answered)
        for message in replies:
            if message.has_error():
                log(WARNING, "Round %s: a node's training failed: %s", server_round, message.error.reason)
        usable = self.check_replies(server_round, answered, arrays, outcome)
        outcome.dropped = len(answered) - len(usable)
        outcome.used = len(usable)
        if outcome.timed_out:
            log(WARNING, "Round %s: %s of %s nodes did not reply within %.0f s",
                server_round, outcome.timed_out, outcome.sent, self.timeout)
        if len(usable) < max(self.min_train_replies, 1):
            log(WARNING, "Round %s: %s usable replies, fewer than min-train-replies=%s: "
                "the global model is kept", server_round, len(usable), self.min_train_replies)
            return arrays, outcome
        aggregate_start = time.perf_counter()
        new_arrays, metrics = self.strategy.aggregate_train(server_round, usable)
        outcome.aggregate_seconds = time.perf_counter() - aggregate_start
        outcome.train_metrics = metrics
        if new_arrays is None:
            log(WARNING, "Round %s: the strategy returned no model: the global model is kept", server_round)
            return arrays, outcome
        outcome.model_updated = True
        return keep_dtypes(new_arrays, arrays), outcome

    def evaluate_round(self, server_round: int, arrays: ArrayRecord, outcome: RoundOutcome) -> None:
        """Client-side evaluation, when the strategy samples any node for it."""
        messages = list(self.strategy.configure_evaluate(server_round, arrays, ConfigRecord(), self.grid))
        if not messages:
            return
        received = exchange(self.grid, messages, self.timeout, self.poll_interval)
        outcome.evaluate_wait_seconds = received.wait_seconds
        outcome.evaluate_reply_lag_seconds = received.last_reply_lag
        try:
            outcome.evaluate_metrics = self.strategy.aggregate_evaluate(server_round, received.replies)
        except Exception as err:  # evaluation replies never touch the model: log and go on
            log(WARNING, "Round %s: client evaluation replies could not be aggregated: %s", server_round, err)

    def run(self, arrays: ArrayRecord, first_round: int, num_rounds: int,
            after_round: AfterRound | None = None) -> ArrayRecord:
        """Run rounds ``first_round .. num_rounds``; returns the final global arrays.

        ``after_round(server_round, arrays, outcome)``, if given, is called after each
        round (to evaluate or record it).
        """
        for server_round in range(first_round, num_rounds + 1):
            log(INFO, "")
            log(INFO, "[ROUND %s/%s]", server_round, num_rounds)
            arrays, outcome = self.train_round(server_round, arrays)
            self.evaluate_round(server_round, arrays, outcome)
            if after_round is not None:
                after_round(server_round, arrays, outcome)
        return arrays

    def run_checkpointed(
        self,
        arrays: ArrayRecord,
        num_rounds: int,
        run_dir: Path,
        *,
        settings: dict[str, Any] | None = None,
        resume_from: Checkpoint | None = None,
        after_round: AfterRound | None = None,
    ) -> ArrayRecord:
        """Run ``num_rounds`` rounds, checkpointing to ``run_dir`` after each one.

        A new run (``resume_from`` None) refuses a ``run_dir`` that holds a checkpoint
        already, and checkpoints the initial ``arrays`` as round 0 first, so a run killed
        in round 1 can resume too. ``resume_from`` (see :func:`fedgma.loop.resume_point`)
        continues after its round: its global arrays replace ``arrays``, and the
        strategy's cross-round state and the sampling RNG are restored, so the rounds
        that follow are those an uninterrupted run would have made.

        ``settings`` (JSON values) are stored in each checkpoint; a run resumes only with
        the same ones. ``after_round`` runs before each round's checkpoint is written.
        """
        folder = RunFolder(Path(run_dir))
        folder.path.mkdir(parents=True, exist_ok=True)
        settings = dict(settings or {})
        if resume_from is None:
            if folder.checkpoint.exists():
                raise CheckpointError(f"{folder.path} already holds a checkpoint: resume from it, "
                                      "or choose another folder")
            first_round, elapsed = 1, 0.0
        else:
            arrays = ArrayRecord({name: Array(value) for name, value in resume_from.arrays.items()})
            restore_strategy_state(self.strategy, resume_from.strategy_state)
            restore_python_rng(resume_from.rng_state)
            first_round, elapsed = resume_from.round + 1, resume_from.wall_seconds
            log(INFO, "Round loop: resuming after round %s from %s", resume_from.round, folder.checkpoint)
        started = time.monotonic() - elapsed  # a resumed run continues its clock

        def checkpoint(server_round: int, new_arrays: ArrayRecord) -> None:
            save_checkpoint(folder.path, Checkpoint(
                round=server_round,
                arrays={name: array.numpy() for name, array in new_arrays.items()},
                strategy_state=strategy_state(self.strategy),
                rng_state=python_rng_state(),
                wall_seconds=time.monotonic() - started,
                settings=settings,
            ))

        def after(server_round: int, new_arrays: ArrayRecord, outcome: RoundOutcome) -> None:
            if after_round is not None:
                after_round(server_round, new_arrays, outcome)
            checkpoint(server_round, new_arrays)

        if resume_from is None:
            checkpoint(0, arrays)
        return self.run(arrays, first_round, num_rounds, after)
