"""The ServerApp: validated settings, the chosen strategy, central evaluation, outputs."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from ..config import RunConfig, parse_run_config
from ..task.data import ColoredSet, load_test_set
from ..task.model import build_model, count_parameters
from ..task.training import evaluate
from .outputs import RunOutputs
from .strategies import build_strategy, describe

app = ServerApp()

EVAL_BATCH_SIZE = 512


def run_directory(config: RunConfig, run_id: int) -> Path:
    """``<output-dir>/<run-name>``; the name defaults to strategy, time and run id."""
    name = config.run_name
    if not name:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        label = config.strategy if config.strategy != "fedgma" else f"fedgma-{config.variant}"
        name = f"{label}-{stamp}-run{run_id}"
    return Path(config.output_dir).expanduser().resolve() / name


class RoundLog:
    """Collects each round's strategy metrics and central evaluation into one row."""

    def __init__(
        self, outputs: RunOutputs, model: torch.nn.Module, id_set: ColoredSet, ood_set: ColoredSet
    ) -> None:
        self.outputs = outputs
        self.model = model
        self.id_loader = id_set.loader(EVAL_BATCH_SIZE, shuffle=False)
        self.ood_loader = ood_set.loader(EVAL_BATCH_SIZE, shuffle=False)
        self.train_metrics: dict[int, MetricRecord] = {}
        self.client_eval_metrics: dict[int, MetricRecord] = {}
        self.start = time.monotonic()
        self.last = self.start

    def record_strategy_metrics(self, strategy) -> None:
        """Keep the aggregated metrics of every round, whatever the strategy."""
        aggregate_train = strategy.aggregate_train
        aggregate_evaluate = strategy.aggregate_evaluate

        def train_wrapper(server_round, replies):
            arrays, metrics = aggregate_train(server_round, replies)
            if metrics is not None:
                self.train_metrics[server_round] = metrics
            return arrays, metrics

        def evaluate_wrapper(server_round, replies):
            metrics = aggregate_evaluate(server_round, replies)
            if metrics is not None:
                self.client_eval_metrics[server_round] = metrics
            return metrics

        strategy.aggregate_train = train_wrapper
        strategy.aggregate_evaluate = evaluate_wrapper

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Central evaluation (Flower's ``evaluate_fn``); also writes the round's row."""
        self.model.load_state_dict(arrays.to_torch_state_dict())
        id_loss, id_acc = evaluate(self.model, self.id_loader)
        ood_loss, ood_acc = evaluate(self.model, self.ood_loader)
        now = time.monotonic()
        row = {
            "round": server_round,
            "wall-seconds": round(now - self.start, 3),
            "round-seconds": round(now - self.last, 3),
            "id-accuracy": id_acc,
            "id-loss": id_loss,
            "ood-accuracy": ood_acc,
            "ood-loss": ood_loss,
        }
        self.last = now
        row.update(self.train_metrics.get(server_round, {}))
        for key, value in self.client_eval_metrics.get(server_round, {}).items():
            row[f"client-{key}"] = value
        self.outputs.add_row(row)
        return MetricRecord(
            {"id-accuracy": id_acc, "id-loss": id_loss, "ood-accuracy": ood_acc, "ood-loss": ood_loss}
        )


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


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federated training described by the run config."""
    config = parse_run_config(dict(context.run_config))  # a bad value stops here
    strategy = build_strategy(config)
    # Missing data stops the run here too, before anything is written.
    id_set, ood_set = load_test_set(config, ood=False), load_test_set(config, ood=True)
    model = build_model(config.num_classes, seed=config.seed)
    outputs = RunOutputs(run_directory(config, context.run_id))
    outputs.write_config(
        config,
        {"run-id": context.run_id, "strategy-label": describe(config),
         "model-parameters": count_parameters(model)},
    )
    log(INFO, "FedGMA app: writing outputs to %s", outputs.run_dir)
    initial_arrays = ArrayRecord(model.state_dict())
    # The model is only an evaluation buffer from here on: each round loads the global weights into it.
    round_log = RoundLog(outputs, model, id_set, ood_set)
    round_log.record_strategy_metrics(strategy)

    result = strategy.start(
        grid=grid,
        initial_arrays=initial_arrays,
        num_rounds=config.num_server_rounds,
        timeout=config.round_timeout,
        evaluate_fn=round_log.evaluate,
    )
    final = result.arrays if result.arrays is not None else initial_arrays
    model_path = outputs.save_model(final.to_torch_state_dict())
    summary = outputs.write_summary(describe(config))
    log(INFO, "FedGMA app: %s on %s/%s, %s partitioning", describe(config), config.dataset,
        config.task, config.partitioning)
    for line in format_table(outputs.rows).splitlines():
        log(INFO, "%s", line)
    log(INFO, "FedGMA app: final OOD accuracy %.4f (peak %.4f), final model %s",
        summary["final-ood-accuracy"], summary["peak-ood-accuracy"], model_path)
