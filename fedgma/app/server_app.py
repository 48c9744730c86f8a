"""The ServerApp: validated settings, the chosen strategy, central evaluation, outputs."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedgma.loop import Checkpoint, CheckpointError, RoundLoop, RoundOutcome, RunFolder, resume_point

from .config import ConfigError, RunConfig, data_source, output_root, parse_run_config, run_path
from .outputs import RunOutputs
from .strategies import build_strategy, describe
from .task.data import ColoredSet, load_test_set
from .task.model import build_model, count_parameters
from .task.training import evaluate

app = ServerApp()

EVAL_BATCH_SIZE = 512


def run_directory(config: RunConfig, run_id: int, root: Path) -> Path:
    """``<root>/<output-dir>/<run-name>``; the name defaults to strategy, time and run id."""
    name = config.run_name
    if not name:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        label = config.strategy if config.strategy != "fedgma" else f"fedgma-{config.variant}"
        name = f"{label}-{stamp}-run{run_id}"
    return run_path(root, "output-dir", config.output_dir, name)


class RoundLog:
    """Central evaluation of each round, written as one row with the round's reply counts."""

    def __init__(
        self, outputs: RunOutputs, model: torch.nn.Module, id_set: ColoredSet, ood_set: ColoredSet,
        elapsed: float = 0.0,
    ) -> None:
        self.outputs = outputs
        self.model = model
        self.id_loader = id_set.loader(EVAL_BATCH_SIZE, shuffle=False)
        self.ood_loader = ood_set.loader(EVAL_BATCH_SIZE, shuffle=False)
        self.start = time.monotonic() - elapsed  # a resumed run continues its clock
        self.last = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def record(self, server_round: int, arrays: ArrayRecord, extra: dict | None = None) -> dict:
        """Evaluate the global model on the ID and OOD test sets and append the row."""
        evaluate_start = time.monotonic()
        self.model.load_state_dict(arrays.to_torch_state_dict())
        id_loss, id_acc = evaluate(self.model, self.id_loader)
        ood_loss, ood_acc = evaluate(self.model, self.ood_loader)
        now = time.monotonic()
        row = {
            **(extra or {}),
            "central-eval-seconds": round(now - evaluate_start, 4),
            "round": server_round,
            "wall-seconds": round(now - self.start, 3),
            "round-seconds": round(now - self.last, 3),
            "id-accuracy": id_acc,
            "id-loss": id_loss,
            "ood-accuracy": ood_acc,
            "ood-loss": ood_loss,
        }
        self.last = now
        self.outputs.add_row(row)
        log(INFO, "Round %s: ID accuracy %.4f, OOD accuracy %.4f", server_round, id_acc, ood_acc)
        return row


def format_table(rows: list[dict]) -> str:
    """A short text table of the per-round accuracies."""
    lines = [f"{'round':>5} {'ID acc':>7} {'OOD acc':>8} {'mask kept':>9} {'seconds':>8}"]
    for row in rows:
        kept = row.get("mask-kept-fraction", "")
        kept = f"{kept:.3f}" if isinstance(kept, float) else "-"
        lines.append(
            f"{row['round']:>5} {row['id-accuracy']:>7.4f} {row['ood-accuracy']:>8.4f} "
            f"{kept:>9} {row['wall-seconds']:>8.1f}"
        )
    return "\n".join(lines)


def resume_directory(config: RunConfig, root: Path) -> Path:
    """The run directory named by ``resume`` (relative to ``<root>/<output-dir>``)."""
    return run_path(root, "resume", config.output_dir, config.resume)


def open_run(config: RunConfig, run_id: int, root: Path) -> tuple[Path, Checkpoint | None]:
    """The run directory and, when resuming, its checkpoint (checked against the settings).

    Both stay below ``root``, the output root that the server's operator sets.
    """
    if config.resume:
        run_dir = resume_directory(config, root)
        try:
            checkpoint = resume_point(run_dir, config.result_settings(), config.num_server_rounds)
        except CheckpointError as err:
            raise ConfigError(f"run config: 'resume': {err}") from err
        return run_dir, checkpoint
    run_dir = run_directory(config, run_id, root)
    if RunFolder(run_dir).checkpoint.exists():
        raise ConfigError(
            f"run config: {run_dir} already holds a run with a checkpoint; set resume={run_dir.name!r} "
            "to continue it, or choose another 'run-name'"
        )
    return run_dir, None


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federated training described by the run config."""
    config = parse_run_config(dict(context.run_config))  # a bad value stops here
    strategy = build_strategy(config)
    run_dir, checkpoint = open_run(config, context.run_id, output_root())
    # Missing data stops the run here too, before anything is written.
    source = data_source()  # the server's own: its environment, never the run config
    id_set, ood_set = load_test_set(config, source, ood=False), load_test_set(config, source, ood=True)
    model = build_model(config.num_classes, seed=config.seed)
    outputs = RunOutputs(run_dir, keep_rounds=None if checkpoint is None else checkpoint.round)
    outputs.write_config(
        config,
        {"run-id": context.run_id, "strategy-label": describe(config),
         "model-parameters": count_parameters(model)},
    )
    log(INFO, "FedGMA app: writing outputs to %s", outputs.run_dir)
    # The model is only an evaluation buffer from here on: each round loads the global weights into it.
    round_log = RoundLog(outputs, model, id_set, ood_set,
                         elapsed=0.0 if checkpoint is None else checkpoint.wall_seconds)

    def after_round(server_round: int, new_arrays: ArrayRecord, outcome: RoundOutcome) -> None:
        round_log.record(server_round, new_arrays, outcome.as_row())

    log(INFO, "Starting %s strategy:", strategy.__class__.__name__)
    strategy.summary()
    arrays = ArrayRecord(model.state_dict())
    if checkpoint is None:
        round_log.record(0, arrays)  # the initial model, checkpointed as round 0 by the loop
    loop = RoundLoop(
        strategy=strategy,
        grid=grid,
        timeout=config.round_timeout,
        min_train_replies=config.min_train_replies,
        seed=config.seed,
        num_partitions=config.partitions_bound,
        poll_interval=config.poll_interval,
        **config.reply_bounds,
    )
    final = loop.run_checkpointed(arrays, config.num_server_rounds, run_dir,
                                  settings=config.result_settings(), resume_from=checkpoint,
                                  after_round=after_round)
    model_path = outputs.save_model(final.to_torch_state_dict())
    summary = outputs.write_summary(describe(config))
    log(INFO, "FedGMA app: %s on %s/%s, %s partitioning", describe(config), config.dataset,
        config.task, config.partitioning)
    for line in format_table(outputs.rows).splitlines():
        log(INFO, "%s", line)
    log(INFO, "FedGMA app: final OOD accuracy %.4f (peak %.4f), final model %s",
        summary["final-ood-accuracy"], summary["peak-ood-accuracy"], model_path)
