"""What a 10-class model learned, shape or colour (``fedgma probe``).

In the 10-class task every class has two foreground and two background colours of its own, in
training and in the in-distribution test set, so colour alone gives the class. The probe paints
each central test image of class ``c`` in the training colours of another class ``c'`` (drawn at
random, never ``c``) and counts how often the final model answers ``c`` (it read the shape) and
how often ``c'`` (it read the colour). The result goes next to the run's other files, so the
report reads it without the model (weights are not committed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedgma.app.config import DataSource
from fedgma.app.run_folder import RunFolder
from fedgma.app.settings import RunConfig
from fedgma.app.task.colored.base_data import load_base_images
from fedgma.app.task.colored.coloring import TRAIN_BACKGROUND, TRAIN_FOREGROUND, paint
from fedgma.app.task.colored.data import load_test_set
from fedgma.app.task.colored.model import build_model
from fedgma.deployment.app_folder import app_defaults
from fedgma.loop.atomic import atomic_write

from .results import PROBE_FILE, grid_run_folders, percent, saved_settings
from .runner import metrics_differences

NUM_CLASSES = 10


@dataclass(frozen=True)
class SwappedColours:
    """Test images painted in another class's training colours."""

    images: np.ndarray  # uint8 [N, 3, 28, 28]
    shape_labels: np.ndarray  # the class of the image's content
    colour_labels: np.ndarray  # the class whose training colours it wears (never the shape's)


def swapped_colour_set(grey: np.ndarray, classes: np.ndarray, seed: int) -> SwappedColours:
    """Paint grayscale images of ``classes`` in the training colours of other classes."""
    rng = np.random.default_rng([seed, 4099])
    colour = (classes + rng.integers(1, NUM_CLASSES, size=len(classes))) % NUM_CLASSES
    foreground = TRAIN_FOREGROUND[colour, rng.integers(0, 2, size=len(classes))]
    background = TRAIN_BACKGROUND[colour, rng.integers(0, 2, size=len(classes))]
    return SwappedColours(paint(grey, foreground, background), classes.astype(np.int64), colour.astype(np.int64))


@torch.no_grad()
def shape_or_colour(model: nn.Module, probe: SwappedColours, batch_size: int = 500) -> dict[str, float]:
    """Fractions of the probe's images the model classifies by shape, by colour, or neither."""
    model.eval()
    predictions = []
    for start in range(0, len(probe.shape_labels), batch_size):
        images = torch.from_numpy(probe.images[start:start + batch_size]).float().div_(255.0)
        predictions.append(model(images).argmax(dim=1).numpy())
    predicted = np.concatenate(predictions)
    shape = float(np.mean(predicted == probe.shape_labels))
    colour = float(np.mean(predicted == probe.colour_labels))
    return {"images": len(predicted), "follows-shape": shape, "follows-colour": colour,
            "neither": 1.0 - shape - colour}


def probe_run(folder: RunFolder, source: DataSource, defaults: dict[str, Any],
              weights: RunFolder | None = None) -> dict[str, object]:
    """Probe a finished 10-class run's final model on its own central test images; writes
    :data:`PROBE_FILE` in the run folder and returns what it wrote (``defaults``: the app's
    default settings, for settings added after the run was made). ``weights``: a rerun of the
    same run (``fedgma grid reproduce``) whose final model stands in for a missing one; its
    metrics must equal the run's (timings aside), so it is the same model."""
    config = RunConfig.from_flat(saved_settings(folder, defaults)).task
    if config.name != "ten-class":
        raise ValueError(f"{folder.path}: the colour probe is for the 10-class task, not {config.name!r}")
    model_path = folder.model if weights is None else weights.model
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} does not exist: the probe needs the run's final model")
    if weights is not None and (differences := metrics_differences(folder, weights)):
        raise ValueError(f"{weights.path} is not a rerun of {folder.path}: its metrics differ ({differences[0]})")
    test = load_test_set(config, source, ood=False)  # the run's own test images (rows and classes)
    grey = load_base_images(config.dataset, source.path, False, source.download)[0][test.rows]
    probe = swapped_colour_set(grey, test.labels, config.seed)
    model = build_model(NUM_CLASSES)
    model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    result: dict[str, object] = {"run": folder.path.name, "dataset": config.dataset, **shape_or_colour(model, probe),
              **({} if weights is None else {"model": "a rerun's, metrics identical"})}
    payload = (json.dumps(result, indent=2) + "\n").encode()
    atomic_write(folder.path / PROBE_FILE, lambda f: f.write(payload))
    return result


def probe_grid(results_dir: Path, source: DataSource, echo: Callable[[str], object] = print,
               app: Path | None = None, reruns: Path | None = None) -> int:
    """Probe every 10-class run of a grid that has its final model; returns how many, and says how
    many of the grid's 10-class runs (with saved settings) that is (``app``: the Flower app folder,
    for its default settings). ``reruns``: a ``fedgma grid reproduce`` scratch folder whose final
    models stand in for the missing ones (see :func:`probe_run`)."""
    done = total = 0
    defaults = app_defaults(app)
    rerun_folders = grid_run_folders(reruns) if reruns is not None and (reruns / "runs").is_dir() else {}
    for name, folder in grid_run_folders(results_dir).items():
        if not folder.config.is_file() or saved_settings(folder, defaults)["task"] != "ten-class":
            continue
        total += 1
        weights = None
        if not folder.model.is_file():
            weights = rerun_folders.get(name)
            if weights is None or not weights.model.is_file():
                continue
        result = probe_run(folder, source, defaults, weights)
        echo(f"{name}: follows shape {percent(float(result['follows-shape']))}, "  # type: ignore[arg-type]
             f"colour {percent(float(result['follows-colour']))}")  # type: ignore[arg-type]
        done += 1
    echo(f"probed {done} of {total} 10-class runs (the others have no final model here"
         f"{'' if reruns is None else ' or in ' + str(reruns)})")
    return done
