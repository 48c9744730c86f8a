"""Round checkpoints: what a run needs to continue exactly where it stopped.

``RunFolder(run_dir).checkpoint`` holds, after every completed round: the round
number, the global weights, the strategy's own state (FedAvgM's momentum,
FedAdam's moments; FedGMA keeps none across rounds), Python's ``random``
state (Flower samples nodes with it), the elapsed wall time, the settings that
decide the result and their hash. It is written with write-then-rename, so a
crash while writing leaves the previous checkpoint intact. It is read with
``allow_pickle=False``: a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write
from .run_folder import RunFolder

# Strategy attributes that carry state from one round to the next (Flower's FedAvgM, FedOpt family).
STATE_ATTRIBUTES = ("momentum_vector", "m_t", "v_t")

StateValue = dict[str, np.ndarray] | list[np.ndarray] | None


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or cannot be resumed with the given settings."""


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


@dataclass
class Checkpoint:
    """The state after ``round`` completed rounds."""

    round: int
    arrays: dict[str, np.ndarray]
    strategy_state: dict[str, StateValue]
    rng_state: Any
    wall_seconds: float
    settings: dict[str, Any]

    @property
    def settings_hash(self) -> str:
        return settings_hash(self.settings)


def strategy_state(strategy: object) -> dict[str, StateValue]:
    """Copy the cross-round state of a Flower strategy."""
    state: dict[str, StateValue] = {}
    for name in STATE_ATTRIBUTES:
        if hasattr(strategy, name):
            value = getattr(strategy, name)
            if isinstance(value, dict):
                value = {k: np.array(v) for k, v in value.items()}
            elif value is not None:
                value = [np.array(v) for v in value]
            state[name] = value
    return state


def restore_strategy_state(strategy: object, state: dict[str, StateValue]) -> None:
    """Put saved cross-round state back into a freshly built strategy."""
    for name, value in state.items():
        if not hasattr(strategy, name):
            raise CheckpointError(f"checkpoint holds state {name!r} that the strategy does not have")
        setattr(strategy, name, value)


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write the run folder's checkpoint atomically; returns its path."""
    arrays: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    for name, value in checkpoint.arrays.items():
        arrays[f"global/{name}"] = value
    for attr, value in checkpoint.strategy_state.items():
        if value is None:
            kinds[attr] = "none"
        elif isinstance(value, dict):
            kinds[attr] = "dict"
            arrays.update({f"state/{attr}/{k}": v for k, v in value.items()})
        else:
            kinds[attr] = "list"
            arrays.update({f"state/{attr}/{i}": v for i, v in enumerate(value)})
    meta = {
        "round": checkpoint.round,
        "array-names": list(checkpoint.arrays),
        "state-kinds": kinds,
        "state-keys": {a: list(v) if isinstance(v, dict) else None for a, v in checkpoint.strategy_state.items()},
        "rng-state": checkpoint.rng_state,
        "wall-seconds": checkpoint.wall_seconds,
        "settings": checkpoint.settings,
        "settings-hash": checkpoint.settings_hash,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    path = RunFolder(run_dir).checkpoint
    atomic_write(path, lambda f: f.write(payload))
    return path


def _tuples(value: Any) -> Any:
    """JSON turned random.getstate()'s tuples into lists; setstate needs tuples."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """Read the run folder's checkpoint; None if the run has none yet."""
    path = RunFolder(run_dir).checkpoint
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {name: data[f"global/{name}"] for name in meta["array-names"]}
            state: dict[str, StateValue] = {}
            for attr, kind in meta["state-kinds"].items():
                if kind == "none":
                    state[attr] = None
                elif kind == "dict":
                    state[attr] = {k: data[f"state/{attr}/{k}"] for k in meta["state-keys"][attr]}
                else:
                    prefix = f"state/{attr}/"
                    count = sum(1 for key in data.files if key.startswith(prefix))
                    state[attr] = [data[f"{prefix}{i}"] for i in range(count)]
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"cannot read the checkpoint {path}: {err}") from err
    checkpoint = Checkpoint(
        round=int(meta["round"]),
        arrays=arrays,
        strategy_state=state,
        rng_state=_tuples(meta["rng-state"]),
        wall_seconds=float(meta["wall-seconds"]),
        settings=meta["settings"],
    )
    if checkpoint.settings_hash != meta["settings-hash"]:
        raise CheckpointError(f"the checkpoint {path} is inconsistent (settings hash mismatch)")
    return checkpoint


def check_resumable(checkpoint: Checkpoint, settings: dict[str, Any], num_rounds: int) -> None:
    """Refuse to resume with ``settings`` that differ from the checkpoint's (naming them), or
    with fewer rounds than it already has."""
    differing = sorted(k for k in set(settings) | set(checkpoint.settings)
                       if settings.get(k) != checkpoint.settings.get(k))
    if differing:
        details = ", ".join(f"{k}: {checkpoint.settings.get(k)!r} -> {settings.get(k)!r}" for k in differing)
        raise CheckpointError(f"cannot resume: these settings differ from the checkpoint's ({details})")
    if num_rounds < checkpoint.round:
        raise CheckpointError(
            f"cannot resume: 'num-server-rounds' is {num_rounds} but the checkpoint "
            f"already has {checkpoint.round} rounds"
        )


def resume_point(run_dir: Path, settings: dict[str, Any], num_rounds: int) -> Checkpoint:
    """The checkpoint in ``run_dir``, checked for resuming ``num_rounds`` rounds with ``settings``.

    Raises
    ------
    CheckpointError
        If there is none, it cannot be read, or the settings or rounds do not allow resuming.
    """
    checkpoint = load_checkpoint(run_dir)
    if checkpoint is None:
        raise CheckpointError(f"{run_dir} holds no checkpoint to resume from")
    check_resumable(checkpoint, settings, num_rounds)
    return checkpoint


def python_rng_state() -> Any:
    return random.getstate()


def restore_python_rng(state: Any) -> None:
    random.setstate(state)
