"""What one round did (:class:`RoundOutcome`), as the round loop records it, writes it in a
checkpoint and returns it in Flower's ``Result``; and :class:`RunFailed`, how a run ends
that cannot succeed."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Result

__all__ = ["MetricValue", "RoundOutcome", "RowValue", "RunFailed", "result_of", "short_reason"]

MetricValue = int | float | list[int] | list[float]  # a MetricRecord's values
RowValue = MetricValue | str
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The line that names a Python exception in a traceback ("KeyError: 'lr'").
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)(: .*)?$")
_METRIC_FIELDS = ("train_metrics", "evaluate_metrics", "central_metrics")


class RunFailed(RuntimeError):
    """The run cannot succeed; the message names the cause. Raised out of the ServerApp's
    ``main``, it ends the run as ``finished:failed`` with the message in the run's log."""


@dataclass
class RoundOutcome:
    """What happened in one round: counts of replies, whether the model moved, timings, the
    aggregated client metrics and the central evaluation. Round 0 is the initial model."""

    round: int
    sent: int = 0
    failed: int = 0
    timed_out: int = 0
    dropped: int = 0
    clipped: int = 0
    corrected: int = 0  # replies whose claimed weight differed from their partition's known size
    used: int = 0
    model_updated: bool = False
    train_wait_seconds: float = 0.0
    aggregate_seconds: float = 0.0
    evaluate_wait_seconds: float = 0.0
    central_eval_seconds: float = 0.0
    round_seconds: float = 0.0
    wall_seconds: float = 0.0  # the run's elapsed time when the round ended (a resumed run continues it)
    train_reply_lag_seconds: float | None = None
    evaluate_reply_lag_seconds: float | None = None
    train_metrics: MetricRecord | None = None
    evaluate_metrics: MetricRecord | None = None
    central_metrics: MetricRecord | None = None
    drop_reasons: list[str] = field(default_factory=list)
    failure_reasons: list[str] = field(default_factory=list)
    kept_because: str = ""  # why the global model did not move this round
    update_norm: float | None = None  # L2 norm of the global model's change this round
    warnings: list[str] = field(default_factory=list)

    @property
    def stalled(self) -> bool:
        """Training was asked for and the model did not move."""
        return self.round > 0 and self.sent > 0 and not self.model_updated

    def as_row(self) -> dict[str, RowValue]:
        """One flat row: the training metrics, the client evaluation's under ``client-``,
        the central evaluation's under their own names, then the counts and timings."""
        row: dict[str, RowValue] = {
            "round": self.round,
            **_entries(self.central_metrics),
            "central-eval-seconds": round(self.central_eval_seconds, 4),
            "round-seconds": round(self.round_seconds, 3),
            "wall-seconds": round(self.wall_seconds, 3),
        }
        if self.round == 0:  # the initial model: no replies, only its central evaluation
            return row
        # Central metrics win over training metrics of the same name, as before.
        row = {**_entries(self.train_metrics), **row}
        for key, value in _entries(self.evaluate_metrics).items():
            row[f"client-{key}"] = value
        row.update({
            "replies-sent": self.sent,
            "replies-failed": self.failed,
            "replies-timed-out": self.timed_out,
            "replies-dropped": self.dropped,
            "replies-clipped": self.clipped,
            "replies-corrected": self.corrected,
            "replies-used": self.used,
            "model-updated": int(self.model_updated),
            "update-norm": "" if self.update_norm is None else round(self.update_norm, 6),
            "train-wait-seconds": round(self.train_wait_seconds, 4),
            "aggregate-seconds": round(self.aggregate_seconds, 4),
            "client-eval-wait-seconds": round(self.evaluate_wait_seconds, 4),
        })
        # Seconds from the newest reply's creation to the server holding it (empty without replies).
        for key, lag in (("train-reply-lag-seconds", self.train_reply_lag_seconds),
                         ("client-eval-reply-lag-seconds", self.evaluate_reply_lag_seconds)):
            row[key] = "" if lag is None else round(lag, 4)
        return row

    def describe(self) -> str:
        """The round's replies in a few words, with the first reasons for failures and drops."""
        text = (f"round {self.round}: {self.sent} sent, {self.failed} failed, {self.timed_out} timed out, "
                f"{self.dropped} dropped, {self.used} usable")
        failures = Counter(short_reason(reason) for reason in self.failure_reasons)
        reasons = [f"{count} x {reason}" for reason, count in failures.most_common(3)]
        reasons += self.drop_reasons[:3]
        text += f" ({'; '.join(reasons)})" if reasons else ""
        return text + (f"; {self.kept_because}" if self.kept_because else "")

    def to_json(self) -> dict[str, Any]:
        """The outcome as JSON values (a checkpoint keeps one per round)."""
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in _METRIC_FIELDS:
            record[name] = None if record[name] is None else dict(record[name])
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RoundOutcome:
        values = dict(record)
        for name in _METRIC_FIELDS:
            values[name] = None if values.get(name) is None else MetricRecord(values[name])
        return cls(**values)


def _entries(metrics: MetricRecord | None) -> dict[str, MetricValue]:
    return dict(metrics) if metrics is not None else {}


def short_reason(reason: str) -> str:
    """An error reply's reason in one line. Deployed, Flower sends ``<class 'KeyError'>:<'lr'>``;
    simulated, Ray's whole traceback (with colour codes), whose root cause is its first
    exception line (``KeyError: 'lr'``)."""
    lines = [line for line in _ANSI.sub("", reason).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else reason
    named = [line for line in lines if _EXCEPTION_LINE.match(line) and not line.rstrip().endswith(":")]
    return (named or lines[-1:])[0].strip()[:300]


def result_of(arrays: ArrayRecord, history: list[RoundOutcome]) -> Result:
    """A Flower ``Result``: the final arrays and each round's metrics, as ``Strategy.start`` returns."""
    result = Result(arrays=arrays)
    for outcome in history:
        if outcome.train_metrics is not None:
            result.train_metrics_clientapp[outcome.round] = outcome.train_metrics
        if outcome.evaluate_metrics is not None:
            result.evaluate_metrics_clientapp[outcome.round] = outcome.evaluate_metrics
        if outcome.central_metrics is not None:
            result.evaluate_metrics_serverapp[outcome.round] = outcome.central_metrics
    return result
