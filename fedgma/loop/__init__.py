"""The reusable round loop: checked replies, timeouts, minimum replies, deterministic order,
checkpoint and resume, for any Flower ServerApp. Needs flwr and NumPy only.
"""

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, resume_point
from .partitions import NODE_RECORD
from .rounds import RoundLoop, RoundOutcome
from .run_folder import RunFolder

__all__ = [
    "NODE_RECORD",
    "Checkpoint",
    "CheckpointError",
    "RoundLoop",
    "RoundOutcome",
    "RunFolder",
    "load_checkpoint",
    "resume_point",
]
