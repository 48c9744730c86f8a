"""Honest clients' update norms vs the round's lower median (FedAvg rounds, the app's task code)."""
import statistics
import sys
import tomllib

import torch

from fedgma.app.config import data_source, parse_run_config
from fedgma.app.task.data import load_client_partition
from fedgma.app.task.model import build_model
from fedgma.app.task.training import train

torch.set_num_threads(1)
raw = tomllib.load(open("/work/main/pyproject.toml","rb"))["tool"]["flwr"]["app"]["config"]
N = int(sys.argv[2]); raw.update({"partitioning": sys.argv[1], "train-images": int(sys.argv[3]), "task": sys.argv[4]})
config = parse_run_config(raw); source = data_source()
model = build_model(config.num_classes, seed=0)
glob = {k: v.detach().clone() for k, v in model.state_dict().items()}
data = [load_client_partition(config, p, N, source) for p in range(N)]
for rnd in range(1, 4):
    ups, ws = [], []
    for p in range(N):
        model.load_state_dict(glob); torch.manual_seed(rnd*100+p)
        train(model, data[p].loader(config.batch_size, True, seed=rnd*100+p), config.local_epochs, config.client_lr)
        ups.append({k: v.detach().clone() for k, v in model.state_dict().items()}); ws.append(len(data[p]))
    norms = [float(sum(((u[k].double()-glob[k].double())**2).sum() for k in glob if glob[k].is_floating_point()).sqrt()) for u in ups]
    med = statistics.median_low(norms)
    print(f"{sys.argv[1]} N={N} round {rnd}: max/median_low={max(norms)/med:.2f} min/med={min(norms)/med:.2f} sizes {min(ws)}-{max(ws)}", flush=True)
    tot = sum(ws); glob = {k: sum(w*u[k].double() for w,u in zip(ws,ups))/tot for k in glob}
    glob = {k: v.to(ups[0][k].dtype) for k, v in glob.items()}
