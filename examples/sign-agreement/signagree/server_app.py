"""The ServerApp: FedGMA as the strategy, FedGMA's round loop for checkpoints and faults.

Outputs go to ``$SIGNAGREE_OUTPUT_ROOT/<run-name>`` (default ``./outputs``): the
loop's checkpoint after every round. Run it again with the same ``run-name`` and it
resumes after the last completed round.
"""

from __future__ import annotations

import os
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedgma.loop import RoundLoop, RoundOutcome, load_checkpoint, resume_point
from fedgma.strategy import FedGMA

from .task import client_data, loss

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    num_rounds = int(config["num-server-rounds"])
    num_clients = int(config["num-clients"])
    run_dir = Path(os.environ.get("SIGNAGREE_OUTPUT_ROOT", "outputs")) / str(config["run-name"])
    strategy = FedGMA(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=2,
                      variant="ws", mask_tau=float(config["tau"]), server_lr=float(config["server-lr"]))
    loop = RoundLoop(strategy, grid, timeout=60.0, min_train_replies=2, seed=0)
    # What the clients train with, sent every round (the checkpoint records it, as it does the
    # strategy's settings: a run resumes only with the same).
    train_config = ConfigRecord({"local-steps": int(config["local-steps"]),
                                 "learning-rate": float(config["learning-rate"])})
    start = resume_point(run_dir, {}, num_rounds) if load_checkpoint(run_dir) else None

    def pooled_loss(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Central evaluation: the loss on every client's data together (a toy can see it all)."""
        data = [client_data(i, num_clients) for i in range(num_clients)]
        features, targets = np.concatenate([f for f, _ in data]), np.concatenate([t for _, t in data])
        return MetricRecord({"pooled-loss": loss(arrays["w"].numpy(), features, targets)})

    def report(server_round: int, arrays: ArrayRecord, outcome: RoundOutcome) -> None:
        log(INFO, "signagree round %s: weights %s, pooled loss %.4f, mask kept %.2f, %s replies used",
            server_round, np.round(arrays["w"].numpy(), 3), (outcome.central_metrics or {})["pooled-loss"],
            (outcome.train_metrics or {}).get("mask-kept-fraction", 0.0), outcome.used)

    initial = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    result = loop.run_checkpointed(initial, num_rounds, run_dir, resume_from=start, train_config=train_config,
                                   evaluate_fn=pooled_loss, after_round=report)
    log(INFO, "signagree: final weights %s", np.round(result.arrays["w"].numpy(), 3))
