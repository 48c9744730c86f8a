"""Honest clients' update norms against the round's lower median, over FedAvg rounds of the app's task.

Usage: .venv/bin/python scripts/norm-spread.py PARTITIONING CLIENTS TRAIN_IMAGES TASK
(measures the spread behind the app's `max-norm-ratio`; docs/hostile-clients.md)
"""

import statistics
import sys

import torch

from fedgma.app.config import data_source
from fedgma.app.settings import defaults, parse_run_config
from fedgma.app.task import make_task

torch.set_num_threads(1)
partitioning, clients, images, task_name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
config = parse_run_config({**defaults(), "partitioning": partitioning, "train-images": images, "task": task_name})
task, source = make_task(config.task), data_source()
model = task.model(seed=0)
current = {k: v.detach().clone() for k, v in model.state_dict().items()}
data = [task.client_data(source, p, clients) for p in range(clients)]
for rnd in range(1, 4):
    updates, weights = [], []
    for p in range(clients):
        model.load_state_dict(current)
        task.train(model, data[p], config.training, seed=rnd * 100 + p, proximal_mu=0.0)
        updates.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        weights.append(len(data[p]))
    floats = [k for k in current if current[k].is_floating_point()]
    norms = [float(sum(((u[k].double() - current[k].double()) ** 2).sum() for k in floats).sqrt()) for u in updates]
    median = statistics.median_low(norms)
    print(f"{partitioning} N={clients} round {rnd}: max/median_low={max(norms) / median:.2f} "
          f"min/median_low={min(norms) / median:.2f} sizes {min(weights)}-{max(weights)}", flush=True)
    total = sum(weights)
    current = {k: (sum(w * u[k].double() for w, u in zip(weights, updates, strict=True)) / total).to(v.dtype)
               for k, v in current.items()}
