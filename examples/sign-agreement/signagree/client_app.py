"""The ClientApp: a few gradient steps on this node's data."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedgma.loop import NODE_RECORD

from .task import client_data, gradient_steps, loss

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    features, targets = client_data(partition_id, num_partitions)
    weights = msg.content["arrays"]["w"].numpy()
    config = msg.content["config"]  # the server's train_config, as in Flower's quickstart apps
    weights = gradient_steps(weights, features, targets, int(config["local-steps"]),
                             float(config["learning-rate"]))
    return Message(
        content=RecordDict({
            "arrays": ArrayRecord({"w": Array(weights)}),
            "metrics": MetricRecord({"num-examples": len(targets),
                                     "train-loss": loss(weights, features, targets)}),
            # Optional: lets the round loop order the replies the same way in every run.
            NODE_RECORD: ConfigRecord({"partition-id": partition_id, "num-partitions": num_partitions}),
        }),
        reply_to=msg,
    )
