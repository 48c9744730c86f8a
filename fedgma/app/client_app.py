"""The ClientApp: local SGD on this node's colored partition.

Flower 1.39 starts a new ClientApp process per message in deployment; the
partition is therefore read from its on-disk cache (see ``fedgma.app.task.data``),
built only the first time.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedgma.loop.partitions import NODE_RECORD

from .config import parse_node_config, parse_run_config
from .task.data import load_client_partition
from .task.model import build_model
from .task.training import evaluate as evaluate_model
from .task.training import resolve_device
from .task.training import train as train_model

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


def _setup(msg: Message, context: Context):
    config = parse_run_config(dict(context.run_config))
    node = parse_node_config(dict(context.node_config))
    data = load_client_partition(config, node.partition_id, node.num_partitions, node.data)
    model = build_model(config.num_classes)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return config, node, data, model.to(resolve_device(node.device))


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
    config, node, data, model = _setup(msg, context)
    train_start = time.perf_counter()
    server_round = int(msg.content["config"].get("server-round", 0))
    proximal_mu = float(msg.content["config"].get("proximal-mu", 0.0))  # sent by FedProx
    # Shuffling differs per round and client but is reproducible from the seed.
    seed = (config.seed * 1_000_003 + server_round) * 10_007 + node.partition_id
    torch.manual_seed(seed)
    loss = train_model(
        model,
        data.loader(config.batch_size, shuffle=True, seed=seed),
        epochs=config.local_epochs,
        lr=config.client_lr,
        proximal_mu=proximal_mu,
    )
    metrics = {
        "train-loss": loss,
        "num-examples": len(data),
        "pull-wait-seconds": max(pull_wait, 0.0),
        "setup-seconds": train_start - setup_start,
        "train-seconds": time.perf_counter() - train_start,
    }
    if started is not None:
        metrics["clientapp-start-seconds"] = started
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
    config, _, data, model = _setup(msg, context)
    loss, accuracy = evaluate_model(model, data.loader(512, shuffle=False))
    metrics = MetricRecord({"eval-loss": loss, "eval-accuracy": accuracy, "num-examples": len(data)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
