"""What each process takes from its own host, never from a run: the server's output root
and partition bindings, each host's data, a node's identity (``--node-config``).

The run's own settings are declared and validated in :mod:`fedgma.app.settings`.
Whoever submits a run chooses its settings, so nothing in them may reach outside
the places the hosts' operators chose: where data lives and whether it may be
downloaded come from the node (:func:`data_source`, the server's from its
environment), and output paths are names under the server's output root
(:func:`output_root`, :func:`run_path`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .settings import ConfigError, check_number

# Set by the operator of each host, never by a run.
OUTPUT_ROOT_ENV = "FEDGMA_OUTPUT_ROOT"  # server: every run's outputs go below it
DATA_DIR_ENV = "FEDGMA_DATA_DIR"  # server and nodes: data sets and cached partitions
DOWNLOAD_ENV = "FEDGMA_DOWNLOAD"  # server and nodes: may torchvision download a missing data set
DEVICE_ENV = "FEDGMA_DEVICE"  # nodes: where the ClientApp trains (auto | cpu | cuda | cuda:N)
BINDINGS_ENV = "FEDGMA_PARTITION_BINDINGS"  # server: JSON file {"<node id>": <partition id>}


def output_root(environ: Mapping[str, str] | None = None) -> Path:
    """The folder every run's outputs go below: ``$FEDGMA_OUTPUT_ROOT``, else ``./outputs``.

    Set by whoever runs the ServerApp's process (the SuperLink's operator), never by a run.
    """
    value = (os.environ if environ is None else environ).get(OUTPUT_ROOT_ENV, "")
    return Path(value).expanduser().resolve() if value else (Path.cwd() / "outputs").resolve()


def run_path(root: Path, key: str, *parts: str) -> Path:
    """``root / parts``, refused with a message naming ``key`` if it leaves ``root``.

    The settings are checked when parsed; this also catches a symbolic link below the
    root that points elsewhere.
    """
    root = root.resolve()
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"run config: {key!r} leads to {path}, outside the output root {root}")
    return path


def partition_bindings(environ: Mapping[str, str] | None = None) -> dict[int, int] | None:
    """The operator's node-to-partition bindings: the JSON file named by
    ``$FEDGMA_PARTITION_BINDINGS`` (``{"<node id>": <partition id>, ...}``, as
    ``fedgma compose register`` writes it); None when unset.

    Set by whoever runs the ServerApp's process (the SuperLink's operator), never by a run.
    """
    value = (os.environ if environ is None else environ).get(BINDINGS_ENV, "")
    if not value:
        return None
    path = Path(value).expanduser()
    try:
        raw = json.loads(path.read_text())
        bindings = {int(node): partition for node, partition in raw.items()}
    except (OSError, ValueError, AttributeError) as err:
        raise ConfigError(f"environment: {BINDINGS_ENV}={value}: not a readable JSON object of "
                          f'{{"<node id>": <partition id>}}: {err}') from err
    bad = {node: p for node, p in bindings.items() if isinstance(p, bool) or not isinstance(p, int) or p < 0}
    if bad or not bindings:
        raise ConfigError(f"environment: {BINDINGS_ENV}={value}: partition ids must be integers >= 0 "
                          f"and at least one node bound, got {bad or raw}")
    return bindings


@dataclass(frozen=True)
class DataSource:
    """Where a host keeps its data sets, and whether a missing one may be downloaded."""

    path: Path
    download: bool


def _environment_flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    value = environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ConfigError(f"environment: {name} must be true or false, got {value!r}")


def data_source(
    node_config: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> DataSource:
    """This host's :class:`DataSource`: node config, else environment, else defaults.

    ``data-dir`` / ``download`` in ``--node-config``, else ``$FEDGMA_DATA_DIR`` /
    ``$FEDGMA_DOWNLOAD``, else ``~/.cache/fedgma`` and ``true``. The ServerApp has no
    node config: its central test sets come from its environment.
    """
    node_config = node_config or {}
    environ = os.environ if environ is None else environ
    folder = node_config["data-dir"] if "data-dir" in node_config else environ.get(DATA_DIR_ENV, "")
    if not isinstance(folder, str):
        raise ConfigError(f"node config: 'data-dir' must be a string, got {folder!r}")
    if "download" in node_config:
        download = node_config["download"]
        if not isinstance(download, bool):
            raise ConfigError(f"node config: 'download' must be true or false, got {download!r}")
    else:
        download = _environment_flag(environ, DOWNLOAD_ENV, True)
    path = Path(folder).expanduser() if folder else Path.home() / ".cache" / "fedgma"
    return DataSource(path=path, download=download)


@dataclass(frozen=True)
class NodeIdentity:
    """A client's place in the federation and its data, from ``--node-config``."""

    partition_id: int
    num_partitions: int
    data: DataSource
    device: str  # "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N"


NODE_KEYS = ("partition-id", "num-partitions", "data-dir", "download", "device")


def check_device(value: object, where: str = "node config") -> str:
    """A device name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; raises ConfigError otherwise."""
    named = isinstance(value, str) and (
        value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())
    )
    if not named:
        raise ConfigError(f"{where}: 'device' must be auto, cpu, cuda or cuda:N, got {value!r}")
    return str(value)


def _device(raw: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """``device`` from the node config, else ``$FEDGMA_DEVICE``, else ``auto``."""
    return check_device(raw["device"] if "device" in raw else environ.get(DEVICE_ENV, "") or "auto")


def parse_node_config(raw: dict[str, Any], environ: Mapping[str, str] | None = None) -> NodeIdentity:
    """Validate ``context.node_config``: ``partition-id``, ``num-partitions`` and,
    optionally, ``data-dir`` and ``download`` (see :func:`data_source`) and ``device``
    (else ``$FEDGMA_DEVICE``, else ``auto``)."""
    unknown = sorted(set(raw) - set(NODE_KEYS))
    if unknown:
        raise ConfigError(f"node config: unknown key(s) {unknown}; known: {', '.join(NODE_KEYS)}")
    num_partitions = check_number(raw, "num-partitions", int, 1, where="node config")
    partition_id = check_number(raw, "partition-id", int, 0, num_partitions - 1, where="node config")
    environ = os.environ if environ is None else environ
    return NodeIdentity(
        partition_id=partition_id, num_partitions=num_partitions, data=data_source(raw, environ),
        device=_device(raw, environ),
    )

