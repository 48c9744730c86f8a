"""Round checkpoints: what a run needs to continue exactly where it stopped.

``run_dir / CHECKPOINT_FILE`` holds, after every completed round: the round
number, the global weights, the strategy's own state (FedAvgM's momentum,
FedAdam's moments; FedGMA keeps none across rounds), what the run is (the
strategy's class and settings, the loop's settings, the caller's ``settings``),
every round's outcome (counts, timings, metrics: the run's history, from which a
resumed run rebuilds its ``Result`` and its records), the elapsed wall time, which node holds which partition, and,
when the run ended failed, why. It is written with write-then-rename, so a crash
while writing leaves the previous checkpoint intact. It is read with
``allow_pickle=False``: a checkpoint cannot run code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write

CHECKPOINT_FILE = "checkpoint.npz"

# Strategy attributes that carry state from one round to the next (Flower's FedAvgM, FedOpt family).
STATE_ATTRIBUTES = ("momentum_vector", "m_t", "v_t")
# Attributes that hold a round's working copy of the model, not a setting.
WORKING_ATTRIBUTES = ("current_arrays",)

StateValue = dict[str, np.ndarray] | list[np.ndarray] | None


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or cannot be resumed with the given settings."""


def settings_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass
class Checkpoint:
    """The state after ``round`` completed rounds.

    ``identity`` is what the run is (see :func:`strategy_identity`; the round loop adds
    its own settings), ``settings`` what the caller said decides its result, ``history``
    one JSON record per round from 0 (``RoundOutcome.to_json``), ``failure`` why the run
    ended failed (None while it has not), ``partitions`` which node holds which data
    partition (``fedgma.loop.partitions``), so that a resumed run keeps the bindings.
    """

    round: int
    arrays: dict[str, np.ndarray]
    strategy_state: dict[str, StateValue]
    wall_seconds: float
    settings: dict[str, Any]
    identity: dict[str, Any]
    history: list[dict[str, Any]]
    failure: str | None = None
    partitions: dict[int, int] = dataclasses.field(default_factory=dict)  # node id -> the partition it holds

    @property
    def settings_hash(self) -> str:
        return settings_hash(self.settings, self.identity)


def _json_value(value: Any) -> Any:
    """``value`` as JSON if it is a setting (a scalar, a list of them, a dataclass of them);
    ``NotImplemented`` otherwise (functions, arrays)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        items = [_json_value(v) for v in value]
        return NotImplemented if any(v is NotImplemented for v in items) else items
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_mapping(dataclasses.asdict(value))
    if isinstance(value, dict):
        return _json_mapping(value)
    return NotImplemented


def _json_mapping(values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are settings, as JSON."""
    converted = {name: _json_value(value) for name, value in values.items()}
    return {name: value for name, value in sorted(converted.items()) if value is not NotImplemented}


def strategy_identity(strategy: object) -> dict[str, Any]:
    """The strategy's class and its settings (public attributes that are numbers, strings or
    flags: FedGMA's variant, tau and server_lr, FedOpt's eta and betas, FedAvg's fractions ...),
    leaving out functions, its working copy of the model and its cross-round state."""
    cls = type(strategy)
    attributes = {name: value for name, value in vars(strategy).items()
                  if not name.startswith("_") and name not in STATE_ATTRIBUTES + WORKING_ATTRIBUTES}
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "settings": _json_mapping(attributes)}


def config_identity(config: Any) -> Any:
    """A train or evaluate config as JSON: a ``ConfigRecord``'s entries; a function of the
    round is named only (what it depends on belongs in the caller's ``settings``)."""
    if config is None:
        return None
    if callable(config):
        return f"function {getattr(config, '__module__', '?')}.{getattr(config, '__qualname__', '?')}"
    return _json_mapping(dict(config))


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
    for attr, state in checkpoint.strategy_state.items():
        if state is None:
            kinds[attr] = "none"
        elif isinstance(state, dict):
            kinds[attr] = "dict"
            arrays.update({f"state/{attr}/{k}": v for k, v in state.items()})
        else:
            kinds[attr] = "list"
            arrays.update({f"state/{attr}/{i}": v for i, v in enumerate(state)})
    meta = {
        "round": checkpoint.round,
        "array-names": list(checkpoint.arrays),
        "state-kinds": kinds,
        "state-keys": {a: list(v) if isinstance(v, dict) else None for a, v in checkpoint.strategy_state.items()},
        "wall-seconds": checkpoint.wall_seconds,
        "settings": checkpoint.settings,
        "identity": checkpoint.identity,
        "history": checkpoint.history,
        "failure": checkpoint.failure,
        "partitions": {str(node): partition for node, partition in checkpoint.partitions.items()},
        "settings-hash": checkpoint.settings_hash,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # the stub reads **arrays as its allow_pickle
    payload = buffer.getvalue()
    path = Path(run_dir) / CHECKPOINT_FILE
    atomic_write(path, lambda f: f.write(payload))
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """Read the run folder's checkpoint; None if the run has none yet."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if "identity" not in meta or "history" not in meta:
                raise CheckpointError(
                    f"the checkpoint {path} was written by an earlier version of fedgma, without a "
                    "record of its strategy and rounds: it cannot be resumed; start a new run")
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
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"cannot read the checkpoint {path}: {err}") from err
    checkpoint = Checkpoint(
        round=int(meta["round"]),
        arrays=arrays,
        strategy_state=state,
        wall_seconds=float(meta["wall-seconds"]),
        settings=meta["settings"],
        identity=meta["identity"],
        history=meta["history"],
        failure=meta["failure"],
        partitions={int(node): int(partition) for node, partition in meta.get("partitions", {}).items()},
    )
    if checkpoint.settings_hash != meta["settings-hash"]:
        raise CheckpointError(f"the checkpoint {path} is inconsistent (settings hash mismatch)")
    return checkpoint


def mark_failed(run_dir: Path, reason: str) -> None:
    """Record in the run folder's checkpoint that the run ended failed, and why (a resumed
    run says so). Nothing to do where there is no readable checkpoint."""
    try:
        checkpoint = load_checkpoint(run_dir)
    except CheckpointError:
        return
    if checkpoint is not None:
        save_checkpoint(run_dir, dataclasses.replace(checkpoint, failure=reason))


def _differences(saved: dict[str, Any], given: dict[str, Any], prefix: str = "") -> list[str]:
    """``"key: saved -> given"`` for each key whose value differs (nested dicts by their keys)."""
    found = []
    for key in sorted(set(saved) | set(given)):
        old, new = saved.get(key), given.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return found


def model_signature(arrays: Mapping[str, Any]) -> dict[str, str]:
    """``{name: "dtype (shape)"}`` of a model's arrays (NumPy arrays or Flower ``Array``s)."""
    return {name: f"{value.dtype} {tuple(value.shape)}" for name, value in arrays.items()}


# What a refused resume adds: the checkpoint is never overwritten by a run it does not belong to.
AFRESH = "; to start afresh, give the run another folder or delete this one"


def check_resumable(checkpoint: Checkpoint, settings: dict[str, Any], num_rounds: int,
                    identity: dict[str, Any] | None = None, model: Mapping[str, Any] | None = None) -> None:
    """Refuse to resume with ``settings`` (or a run ``identity``: strategy, loop; or a ``model``
    whose arrays' names, dtypes or shapes are not the checkpoint's) that differ from the
    checkpoint's, naming them, or with fewer rounds than it already has."""
    differing = _differences(checkpoint.settings, settings)
    if differing:
        raise CheckpointError(f"cannot resume: these settings differ from the checkpoint's ({', '.join(differing)})"
                              f"{AFRESH}")
    if model is not None:
        differing = _differences(model_signature(checkpoint.arrays), model_signature(model))
        if differing:
            raise CheckpointError("cannot resume: the model differs from the checkpoint's (array: dtype and shape; "
                                  f"{', '.join(differing)}){AFRESH}")
    if identity is not None:
        differing = _differences(checkpoint.identity, identity)
        if differing:
            raise CheckpointError("cannot resume: the strategy or the round loop differs from the checkpoint's "
                                  f"({', '.join(differing)}){AFRESH}")
    if num_rounds < checkpoint.round:
        raise CheckpointError(
            f"cannot resume: the run asks for {num_rounds} rounds but the checkpoint already has "
            f"{checkpoint.round}"
        )


def resume_point(run_dir: Path, settings: dict[str, Any], num_rounds: int) -> Checkpoint:
    """The checkpoint in ``run_dir``, checked for resuming ``num_rounds`` rounds with ``settings``.

    The round loop checks the strategy and its own settings too when it resumes
    (:meth:`fedgma.loop.RoundLoop.run_checkpointed`).

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
