"""The ClientApp: local SGD on this node's colored partition.

Flower 1.39 starts a new ClientApp process per message in deployment; the
partition is therefore read from its on-disk cache (see ``fedgma.task.data``),
built only the first time.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..config import parse_node_config, parse_run_config
from ..task.data import load_client_partition
from ..task.model import build_model
from ..task.training import evaluate as evaluate_model
from ..task.training import train as train_model

app = ClientApp()


def _setup(msg: Message, context: Context):
    config = parse_run_config(dict(context.run_config))
    node = parse_node_config(dict(context.node_config))
    data = load_client_partition(config, node.partition_id, node.num_partitions)
    model = build_model(config.num_classes)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return config, node, data, model


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train from the received global weights; reply with the new weights."""
    config, node, data, model = _setup(msg, context)
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
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train-loss": loss, "num-examples": len(data)}),
            # Lets the server order replies the same way in every run (see fedgma.server.rounds).
            "node": ConfigRecord({"partition-id": node.partition_id}),
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
