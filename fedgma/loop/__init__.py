"""The reusable round loop: checked replies, timeouts, minimum replies, deterministic order,
checkpoint and resume, for any Flower ServerApp. Needs flwr and NumPy only.

Names are imported on first use: a ClientApp that needs only ``NODE_RECORD`` does not
pay for the loop and the strategy at every start-up (one process per message).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedgma import lazy_attributes

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, resume_point
    from .outcome import RoundOutcome, RunFailed
    from .partitions import NODE_RECORD
    from .rounds import RoundLoop

_MODULE_OF = {
    "Checkpoint": "checkpoint",
    "CheckpointError": "checkpoint",
    "load_checkpoint": "checkpoint",
    "resume_point": "checkpoint",
    "NODE_RECORD": "partitions",
    "RoundLoop": "rounds",
    "RoundOutcome": "outcome",
    "RunFailed": "outcome",
}
__all__ = [
    "NODE_RECORD",
    "Checkpoint",
    "CheckpointError",
    "RoundLoop",
    "RoundOutcome",
    "RunFailed",
    "load_checkpoint",
    "resume_point",
]


__getattr__, __dir__ = lazy_attributes(__name__, _MODULE_OF)
