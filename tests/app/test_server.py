"""The ServerApp's pieces: strategy selection and the files a run writes."""

import csv
import json

import pytest
import torch
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx
from run_settings import settings

from fedgma.app.outputs import METRIC_COLUMNS, RunOutputs
from fedgma.app.run_folder import UnknownMetric
from fedgma.app.settings import parse_run_config
from fedgma.app.strategies import build_strategy, describe
from fedgma.strategy import FedGMA, FedGMAAdam


@pytest.mark.parametrize(
    ("name", "cls"),
    [("fedgma", FedGMA), ("fedavg", FedAvg), ("fedavgm", FedAvgM), ("fedprox", FedProx), ("fedadam", FedAdam),
     ("fedgma-adam", FedGMAAdam)],
)
def test_strategy_setting_selects_flowers_classes(name, cls):
    strategy = build_strategy(parse_run_config(settings(strategy=name, min_nodes=3)))
    assert type(strategy) is cls
    assert strategy.min_train_nodes == 3 and strategy.min_available_nodes == 3
    assert strategy.min_evaluate_nodes == 0  # the default fraction-evaluate is 0
    with_eval = build_strategy(parse_run_config(settings(strategy=name, min_nodes=3, fraction_evaluate=0.5)))
    assert with_eval.min_evaluate_nodes == 3


def test_strategy_settings_reach_the_strategy():
    gma = build_strategy(parse_run_config(settings(variant="gma", server_lr=0.1, agreement_weighted=True)))
    assert (gma.variant, gma.mask_tau, gma.server_lr, gma.agreement_weighted) == ("gma", 0.4, 0.1, True)
    prox = build_strategy(parse_run_config(settings(strategy="fedprox", proximal_mu=0.5)))
    assert prox.proximal_mu == 0.5
    avgm = build_strategy(parse_run_config(settings(strategy="fedavgm", server_momentum=0.7)))
    assert avgm.server_momentum == 0.7
    assert describe(parse_run_config(settings(tau=0.6)).strategy) == "fedgma-ws(tau=0.6,lr=1)"
    assert describe(parse_run_config(settings(variant="gma")).strategy) == "fedgma-gma(tau=0.4,lr=1)"
    adam = build_strategy(parse_run_config(settings(strategy="fedgma-adam", tau=0.6, adam_eta=0.05, adam_tau=0.01)))
    assert (adam.mask_tau, adam.tau, adam.eta, adam.variant) == (0.6, 0.01, 0.05, "gma")
    assert describe(parse_run_config(settings(strategy="fedgma-adam")).strategy) == "fedgma-gma+fedadam(tau=0.4)"


@pytest.mark.parametrize("name", ["fedgma", "fedgma-adam"])
def test_mask_controls_and_the_observer_reach_fedgmas_strategies(name):
    def observer(masks):
        return {}

    default = build_strategy(parse_run_config(settings(strategy=name, seed=3)))
    assert (default.mask_control, default.mask_metrics) == ("none", None)
    random = build_strategy(parse_run_config(settings(strategy=name, mask_control="random", seed=3)), observer)
    assert (random.mask_control, random.mask_seed, random.mask_metrics) == ("random", 3, observer)
    assert "mask=random" in describe(parse_run_config(settings(strategy=name, mask_control="random")).strategy)
    assert "mask=" not in describe(parse_run_config(settings(strategy=name)).strategy)
    # Flower's strategies have no mask: the observer is not theirs to call.
    assert not hasattr(build_strategy(parse_run_config(settings(strategy="fedavg")), observer), "mask_metrics")


def test_run_outputs(tmp_path):
    outputs = RunOutputs(tmp_path / "run")
    outputs.write_config(parse_run_config(settings()), {"run-id": 7})
    outputs.add_row({"round": 0, "wall-seconds": 0.5, "id-accuracy": 0.5, "ood-accuracy": 0.5})
    with pytest.raises(UnknownMetric, match="not-a-column"):
        outputs.add_row({"round": 1, "wall-seconds": 2.0, "not-a-column": 1})
    outputs.add_row({"round": 1, "wall-seconds": 2.0, "id-accuracy": 0.8, "ood-accuracy": 0.7,
                     "mask-kept-fraction": 0.25})
    outputs.add_row({"round": 2, "wall-seconds": 3.0, "id-accuracy": 0.9, "ood-accuracy": 0.6})
    outputs.save_model({"w": torch.ones(2)})
    summary = outputs.write_summary("fedgma")

    with (tmp_path / "run" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0].keys()) == METRIC_COLUMNS
    assert rows[1]["mask-kept-fraction"] == "0.25" and rows[2]["mask-kept-fraction"] == ""
    assert summary["peak-ood-accuracy"] == 0.7 and summary["final-ood-accuracy"] == 0.6
    assert json.loads((tmp_path / "run" / "config.json").read_text())["run-id"] == 7
    assert torch.equal(torch.load(tmp_path / "run" / "final_model.pt")["w"], torch.ones(2))
