"""A grid's results folder as the tools read it: where each run's folder is (``grid.json``
records it), a run's saved settings, the colour probe's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedgma.app.run_folder import RunFolder
from fedgma.app.settings import parse_run_config

PROBE_FILE = "colour_probe.json"  # in a run folder: what ``fedgma probe`` found
GRID_FILE = "grid.json"  # in a results folder: the grid's name, scale, overrides and runs (their folders, settings)


def percent(fraction: float) -> str:
    """A fraction as a percentage with one decimal (``0.997`` -> ``99.7 %``), with more decimals
    where one would round a value short of 100 % (or above 0 %) to it."""
    for digits in range(1, 5):
        text = f"{100 * fraction:.{digits}f}"
        if not ((float(text) == 100 and fraction < 1) or (float(text) == 0 and fraction > 0)):
            break
    return f"{text} %"


def saved_settings(folder: RunFolder, defaults: dict[str, Any]) -> dict[str, Any]:
    """A run's settings from its ``config.json``, keyed as :class:`RunConfig`'s fields; a
    setting added after the run was made had its default value then (``defaults``: the
    app's ``[tool.flwr.app.config]``)."""
    saved = folder.read_config()
    return {key: saved.get(key, default) for key, default in parse_run_config(defaults).flat().items()}


def read_manifest(results_dir: Path) -> dict[str, Any] | None:
    """The grid's :data:`GRID_FILE` in ``results_dir``; None where there is none."""
    path = results_dir / GRID_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def grid_run_folders(results_dir: Path, manifest: dict[str, Any] | None = None) -> dict[str, RunFolder]:
    """The run folders of the grid in ``results_dir``, by run name, as its manifest (:func:`read_manifest`,
    unless given) records them (one written before the folders were recorded:
    ``runs/<output-dir>/<run-name>``; without a manifest: every folder in ``runs``)."""
    runs_dir = results_dir / "runs"
    manifest = manifest if manifest is not None else read_manifest(results_dir)
    if manifest is None:
        return {path.name: RunFolder(path) for path in sorted(runs_dir.iterdir()) if path.is_dir()}
    output_dir = str(manifest.get("overrides", {}).get("output-dir") or "")
    return {run["name"]: RunFolder(runs_dir / run["folder"]) if "folder" in run
            else RunFolder.at(runs_dir, output_dir, run["name"]) for run in manifest["runs"]}


def load_probes(folders: dict[str, RunFolder]) -> dict[str, dict[str, float]]:
    """The probe results committed in a grid's run folders (:func:`grid_run_folders`), by run name."""
    return {name: json.loads((folder.path / PROBE_FILE).read_text())
            for name, folder in folders.items() if (folder.path / PROBE_FILE).is_file()}
