"""The ServerApp: validated settings, the chosen strategy, central evaluation, outputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from fedgma.loop import Checkpoint, CheckpointError, RoundLoop, RoundOutcome, resume_point

from .config import DataSource, data_source, output_root, partition_bindings
from .outputs import RunOutputs, outcome_row
from .run_folder import RunFolder
from .run_lock import hold_run_folder
from .settings import ConfigError, RunConfig, parse_run_config
from .strategies import build_strategy, describe
from .task import Task, TaskData, make_task
from .task.training import count_parameters

app = ServerApp()

def run_directory(config: RunConfig, run_id: int, root: Path) -> Path:
    """``<root>/<output-dir>/<run-name>``; the name defaults to strategy, time and run id."""
    name = config.outputs.run_name
    if not name:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        strategy = config.strategy
        label = strategy.name if strategy.name != "fedgma" else f"fedgma-{strategy.variant}"
        name = f"{label}-{stamp}-run{run_id}"
    return RunFolder.at(root, config.outputs.output_dir, name, "output-dir").path


def central_evaluation(
    task: Task, model: torch.nn.Module, test_sets: Mapping[str, TaskData]
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """``evaluate_fn`` for the round loop: the global model on each of the task's test sets."""

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        # The model is only an evaluation buffer: each round loads the global weights into it.
        model.load_state_dict(arrays.to_torch_state_dict())
        metrics: dict[str, int | float | list[int] | list[float]] = {}
        for name, data in test_sets.items():
            loss, accuracy = task.evaluate(model, data)
            metrics |= {f"{name}-accuracy": accuracy, f"{name}-loss": loss}
        return MetricRecord(metrics)

    return evaluate_fn


def format_table(rows: list[dict[str, Any]]) -> str:
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
    return RunFolder.at(root, config.outputs.output_dir, config.outputs.resume, "resume").path


def open_run(config: RunConfig, run_id: int, root: Path) -> tuple[Path, Checkpoint | None]:
    """The run directory and, when resuming, its checkpoint (checked against the settings).

    Both stay below ``root``, the output root that the server's operator sets.
    """
    if config.outputs.resume:
        run_dir = resume_directory(config, root)
        try:
            checkpoint = resume_point(run_dir, config.result_settings(), config.federation.num_server_rounds)
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
    task = make_task(config.task)
    strategy = build_strategy(config, mask_metrics=task.mask_metrics)
    run_dir, checkpoint = open_run(config, context.run_id, output_root())
    # Missing data stops the run here too, before anything is written.
    source = data_source()  # the server's own: its environment, never the run config
    test_sets = task.test_sets(source)
    bindings = partition_bindings()  # the operator's, from the server's environment
    with hold_run_folder(run_dir):  # before anything is written: one ServerApp per run folder
        _run(grid, context, config, task, strategy, run_dir, checkpoint, source, test_sets, bindings)


def _run(grid: Grid, context: Context, config: RunConfig, task: Task, strategy: FedAvg, run_dir: Path,
         checkpoint: Checkpoint | None, source: DataSource, test_sets: Mapping[str, TaskData],
         bindings: dict[int, int] | None) -> None:
    """The run, its folder held (see :func:`main`)."""
    model = task.model(seed=config.task.seed)
    # Resuming: the checkpoint's rounds are the record (rows written after it are dropped).
    outputs = RunOutputs(run_dir, rows=None if checkpoint is None else
                         [outcome_row(RoundOutcome.from_json(record)) for record in checkpoint.history])
    outputs.write_config(
        config,
        {"run-id": context.run_id, "strategy-label": describe(config.strategy),
         "model-parameters": count_parameters(model)},
    )
    log(INFO, "FedGMA app: writing outputs to %s", outputs.run_dir)

    def after_round(server_round: int, new_arrays: ArrayRecord, outcome: RoundOutcome) -> None:
        outputs.add_row(outcome_row(outcome))

    log(INFO, "Starting %s strategy:", strategy.__class__.__name__)
    strategy.summary()
    federation = config.federation
    loop = RoundLoop(
        strategy=strategy,
        grid=grid,
        timeout=federation.round_timeout,
        min_train_replies=federation.min_train_replies,
        seed=config.task.seed,
        num_partitions=federation.partitions_bound,
        poll_interval=federation.poll_interval,
        max_failed_rounds=federation.failed_rounds_bound,
        # Each reply weighs what its partition holds, as the server computes it, not what it claims.
        partition_sizes=task.partition_sizes(source),
        partition_bindings=bindings,
        skip_timed_out_rounds=federation.skip_timed_out_rounds,
        bounds=federation.reply_bounds,
    )
    # A run that cannot succeed raises RunFailed here: Flower ends it as finished:failed, with the cause.
    result = loop.run_checkpointed(ArrayRecord(model.state_dict()), federation.num_server_rounds, run_dir,
                                   settings=config.result_settings(), resume_from=checkpoint,
                                   evaluate_fn=central_evaluation(task, model, test_sets),
                                   after_round=after_round)
    model_path = outputs.save_model(result.arrays.to_torch_state_dict())
    summary = outputs.write_summary(describe(config.strategy))
    log(INFO, "FedGMA app: %s on %s/%s, %s partitioning", describe(config.strategy), config.task.dataset,
        config.task.name, config.task.partitioning)
    for line in format_table(outputs.rows).splitlines():
        log(INFO, "%s", line)
    log(INFO, "FedGMA app: final OOD accuracy %.4f (peak %.4f), final model %s",
        summary["final-ood-accuracy"], summary["peak-ood-accuracy"], model_path)
