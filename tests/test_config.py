"""Run and node settings are validated once, with messages that name the key."""

import pytest

from fedgma.config import ConfigError, parse_node_config, parse_run_config
from run_settings import DEFAULTS, settings


def test_defaults_are_valid():
    config = parse_run_config(DEFAULTS)
    assert config.strategy == "fedgma" and config.variant == "ws" and config.tau is None


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"tau": 1.2}, "tau"),
        ({"tau": "high"}, "tau"),
        ({"server-lr": -0.1}, "server-lr"),
        ({"variant": "and"}, "variant"),
        ({"strategy": "scaffold"}, "strategy"),
        ({"num-server-rounds": 0}, "num-server-rounds"),
        ({"num-server-rounds": 2.5}, "num-server-rounds"),
        ({"fraction-train": 0.0}, "fraction-train"),
        ({"client-lr": 0.0}, "client-lr"),
        ({"batch-size": 0}, "batch-size"),
        ({"dataset": "cifar10"}, "dataset"),
        ({"partitioning": "shards"}, "partitioning"),
        ({"agreement-weighted": "yes"}, "agreement-weighted"),
        ({"color-flip-min": 0.3}, "color-flip-min"),
        ({"run-name": "../escape"}, "run-name"),
        ({"tua": 0.5}, "tua"),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key):
        parse_run_config({**DEFAULTS, **override})


def test_missing_key_is_named():
    raw = dict(DEFAULTS)
    del raw["seed"]
    with pytest.raises(ConfigError, match="'seed'"):
        parse_run_config(raw)


def test_tau_accepts_numbers_and_auto():
    assert parse_run_config(settings(tau=0.6)).tau == 0.6
    assert parse_run_config(settings(tau=1)).tau == 1.0
    assert parse_run_config(settings(tau="auto")).tau is None


def test_node_config():
    node = parse_node_config({"partition-id": 3, "num-partitions": 4})
    assert (node.partition_id, node.num_partitions) == (3, 4)
    with pytest.raises(ConfigError, match="node config: 'partition-id'"):
        parse_node_config({"partition-id": 4, "num-partitions": 4})
    with pytest.raises(ConfigError, match="num-partitions"):
        parse_node_config({"partition-id": 0})
