"""The ClientApp: local training on this node's partition of the run's task.

Flower 1.39 starts a new ClientApp process per message in deployment; the
task reads its partition from an on-disk cache (e.g. ``fedgma.app.task.colored.data``),
built only the first time.
"""

from __future__ import annotations

import os
import sys
import time
from logging import INFO
from pathlib import Path
from typing import cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from fedgma.loop.partitions import NODE_RECORD

from .config import NodeIdentity, parse_node_config
from .settings import RunConfig, parse_run_config
from .task import Task, TaskData, make_task
from .task.training import resolve_device

app = ClientApp()


def clientapp_start_seconds() -> float | None:
    """Seconds since this process started, if it is a ``flwr-clientapp`` process.

    In deployment the SuperNode starts one such process per message, so this is
    the process start-up (interpreter, imports) the message paid for. In
    simulation the ClientApp runs in a long-lived worker: ``None``. Linux only
    (``/proc``); ``None`` elsewhere.
    """
    if Path(sys.argv[0]).name != "flwr-clientapp":
        return None
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def _setup(msg: Message, context: Context) -> tuple[RunConfig, NodeIdentity, Task, TaskData, torch.nn.Module]:
    config = parse_run_config(dict(context.run_config))
    node = parse_node_config(dict(context.node_config))
    task = make_task(config.task)
    data = task.client_data(node.data, node.partition_id, node.num_partitions)
    model = task.model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    return config, node, task, data, model.to(resolve_device(node.device))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train from the received global weights; reply with the new weights.

    Besides the loss, the reply's metrics time the message's parts (seconds):
    ``pull-wait-seconds`` (from the instruction's creation on the server to this
    ClientApp's start; across machines, as exact as their clocks agree),
    ``setup-seconds`` (settings, partition, model), ``train-seconds`` and, in
    deployment, ``clientapp-start-seconds``.
    """
    started = clientapp_start_seconds()
    pull_wait = time.time() - (started or 0.0) - msg.metadata.created_at
    setup_start = time.perf_counter()
    config, node, task, data, model = _setup(msg, context)
    train_start = time.perf_counter()
    instruction = msg.content.config_records["config"]
    server_round = int(cast(int, instruction.get("server-round", 0)))
    proximal_mu = float(cast(float, instruction.get("proximal-mu", 0.0)))  # sent by FedProx
    seed = (config.task.seed * 1_000_003 + server_round) * 10_007 + node.partition_id
    loss = task.train(model, data, config.training, seed=seed, proximal_mu=proximal_mu)
    metrics: dict[str, int | float | list[int] | list[float]] = {
        "train-loss": loss,
        "num-examples": len(data),
        "pull-wait-seconds": max(pull_wait, 0.0),
        "setup-seconds": train_start - setup_start,
        "train-seconds": time.perf_counter() - train_start,
    }
    if started is not None:
        metrics["clientapp-start-seconds"] = started
    # One line per message: in a simulation on a Ray cluster, Ray prefixes it with the node it ran on.
    log(INFO, "fedgma client: round %s, partition %s of %s: %s examples trained in %.2f s on %s",
        server_round, node.partition_id, node.num_partitions, len(data), metrics["train-seconds"],
        next(model.parameters()).device)
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.cpu().state_dict()),
            "metrics": MetricRecord(metrics),
            # Lets the server order replies the same way in every run (fedgma.loop.partitions).
            NODE_RECORD: ConfigRecord({"partition-id": node.partition_id, "num-partitions": node.num_partitions}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global weights on this node's partition."""
    _, _, task, data, model = _setup(msg, context)
    loss, accuracy = task.evaluate(model, data)
    metrics = MetricRecord({"eval-loss": loss, "eval-accuracy": accuracy, "num-examples": len(data)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
