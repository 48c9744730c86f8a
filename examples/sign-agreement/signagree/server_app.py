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
from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedgma.loop import RoundLoop, RoundOutcome, load_checkpoint, resume_point
from fedgma.strategy import FedGMA

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    num_rounds = int(config["num-server-rounds"])
    run_dir = Path(os.environ.get("SIGNAGREE_OUTPUT_ROOT", "outputs")) / str(config["run-name"])
    strategy = FedGMA(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=2,
                      variant="ws", tau=float(config["tau"]), server_lr=float(config["server-lr"]))
    loop = RoundLoop(strategy, grid, timeout=60.0, min_train_replies=2, seed=0)
    # The settings that decide the result: a run resumes only with the same ones.
    settings = {key: config[key] for key in ("local-steps", "learning-rate", "tau", "server-lr")}
    start = None
    if load_checkpoint(run_dir) is not None:
        start = resume_point(run_dir, settings, num_rounds)

    def report(server_round: int, arrays: ArrayRecord, outcome: RoundOutcome) -> None:
        log(INFO, "signagree round %s: weights %s, mask kept %.2f, %s replies used", server_round,
            np.round(arrays["w"].numpy(), 3), (outcome.train_metrics or {}).get("mask-kept-fraction", 0.0),
            outcome.used)

    initial = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    final = loop.run_checkpointed(initial, num_rounds, run_dir, settings=settings, resume_from=start,
                                  after_round=report)
    log(INFO, "signagree: final weights %s", np.round(final["w"].numpy(), 3))
