"""Run and node settings are validated once, with messages that name the key."""

from pathlib import Path

import pytest
from run_settings import DEFAULTS, settings

from fedgma.app.config import DataSource, data_source, output_root, parse_node_config, run_path
from fedgma.app.settings import ConfigError, parse_run_config
from fedgma.strategy import ReplyBounds


def test_defaults_are_valid():
    config = parse_run_config(DEFAULTS)
    assert config.strategy.name == "fedgma" and config.strategy.variant == "ws" and config.strategy.tau is None


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
        ({"max-weight-ratio": 0.5}, "max-weight-ratio"),
        ({"num-partitions": -1}, "num-partitions"),
        ({"reply-poll-interval": -0.1}, "reply-poll-interval"),
        ({"reply-poll-interval": 120}, "reply-poll-interval"),
        # Where data lives and whether it may be downloaded is each host's setting, not the run's.
        ({"data-dir": "/etc"}, "data-dir"),
        ({"download": True}, "download"),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key):
        parse_run_config({**DEFAULTS, **override})


def test_a_poll_interval_of_zero_leaves_the_wait_to_flowers_grid():
    assert parse_run_config({**DEFAULTS, "reply-poll-interval": 0}).federation.poll_interval is None
    assert parse_run_config({**DEFAULTS, "reply-poll-interval": 0.25}).federation.poll_interval == 0.25
    # Not a result setting: a run may resume with another interval.
    assert "reply-poll-interval" not in parse_run_config(DEFAULTS).result_settings()


def test_missing_key_is_named():
    raw = dict(DEFAULTS)
    del raw["seed"]
    with pytest.raises(ConfigError, match="'seed'"):
        parse_run_config(raw)


def test_tau_accepts_numbers_and_auto():
    assert parse_run_config(settings(tau=0.6)).strategy.tau == 0.6
    assert parse_run_config(settings(tau=1)).strategy.tau == 1.0
    assert parse_run_config(settings(tau="auto")).strategy.tau is None


def test_node_config():
    node = parse_node_config({"partition-id": 3, "num-partitions": 4})
    assert (node.partition_id, node.num_partitions) == (3, 4)
    with pytest.raises(ConfigError, match="node config: 'partition-id'"):
        parse_node_config({"partition-id": 4, "num-partitions": 4})
    with pytest.raises(ConfigError, match="num-partitions"):
        parse_node_config({"partition-id": 0})


@pytest.mark.parametrize("key", ["output-dir", "resume"])
@pytest.mark.parametrize("value", ["/etc", "/tmp/x", "~", "~/runs", "~root/x", "..", "runs/../../x", "a/..", "..\\x"])
def test_output_paths_must_stay_below_the_output_root(key, value):
    with pytest.raises(ConfigError, match=f"'{key}' must be a relative path below the server's output root"):
        parse_run_config(settings(**{key.replace("-", "_"): value}))


def test_relative_output_paths_are_accepted():
    config = parse_run_config(settings(output_dir="study/a", resume="run-1", run_name="run-2"))
    assert (config.outputs.output_dir, config.outputs.resume) == ("study/a", "run-1")


def test_run_path_refuses_a_link_that_leaves_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    (root / "link").symlink_to(tmp_path)
    assert run_path(root, "output-dir", "inside", "run") == (root / "inside" / "run").resolve()
    with pytest.raises(ConfigError, match=r"'output-dir' leads to .* outside the output root"):
        run_path(root, "output-dir", "link", "run")


def test_output_root_is_the_operators_setting(tmp_path, monkeypatch):
    assert output_root({"FEDGMA_OUTPUT_ROOT": str(tmp_path)}) == tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    assert output_root({}) == (tmp_path / "outputs").resolve()


def test_data_source_comes_from_the_node_then_the_environment():
    environ = {"FEDGMA_DATA_DIR": "/srv/env-data", "FEDGMA_DOWNLOAD": "false"}
    assert data_source({}, environ) == DataSource(Path("/srv/env-data"), False)
    assert data_source({"data-dir": "/srv/node", "download": True}, environ) == DataSource(Path("/srv/node"), True)
    assert data_source({}, {}) == DataSource(Path.home() / ".cache" / "fedgma", True)
    with pytest.raises(ConfigError, match="FEDGMA_DOWNLOAD"):
        data_source({}, {"FEDGMA_DOWNLOAD": "maybe"})
    with pytest.raises(ConfigError, match="node config: 'download'"):
        data_source({"download": "yes"}, {})
    node = parse_node_config({"partition-id": 0, "num-partitions": 2, "data-dir": "/srv/n"}, {})
    assert node.data == DataSource(Path("/srv/n"), True)
    with pytest.raises(ConfigError, match="node config: unknown key"):
        parse_node_config({"partition-id": 0, "num-partitions": 2, "output-dir": "/"}, {})


def test_the_device_comes_from_the_node_then_the_environment():
    base = {"partition-id": 0, "num-partitions": 2}
    assert parse_node_config(base, {}).device == "auto"
    assert parse_node_config(base, {"FEDGMA_DEVICE": "cpu"}).device == "cpu"
    assert parse_node_config({**base, "device": "cuda:1"}, {"FEDGMA_DEVICE": "cpu"}).device == "cuda:1"
    for bad in ("gpu", "cuda:x", 0):
        with pytest.raises(ConfigError, match="'device'"):
            parse_node_config({**base, "device": bad}, {})


def test_reply_bounds_resolve_zero_to_no_bound_once_for_loop_and_strategies():
    off = settings(max_update_norm=0.0, max_weight_ratio=0.0, max_norm_ratio=0.0)
    assert parse_run_config(off).federation.reply_bounds == ReplyBounds(
        max_num_examples=100000000, max_update_norm=None, max_weight_ratio=None, max_norm_ratio=None)
    on = settings(max_update_norm=2.5, max_weight_ratio=4.0, max_norm_ratio=3.0)
    assert parse_run_config(on).federation.reply_bounds == ReplyBounds(
        max_num_examples=100000000, max_update_norm=2.5, max_weight_ratio=4.0, max_norm_ratio=3.0)
    with pytest.raises(ConfigError, match="'max-norm-ratio' must be 0 \\(no bound\\) or >= 1"):
        parse_run_config(settings(max_norm_ratio=0.5))


def test_the_operators_partition_bindings_come_from_the_servers_environment(tmp_path):
    from fedgma.app.config import BINDINGS_ENV, partition_bindings

    assert partition_bindings({}) is None
    good = tmp_path / "bindings.json"
    good.write_text('{"123456789": 0, "987654321": 1}')
    assert partition_bindings({BINDINGS_ENV: str(good)}) == {123456789: 0, 987654321: 1}
    for text in ("[1, 2]", '{"x": 0}', '{"1": -1}', '{"1": "0"}', "{}", "not json"):
        good.write_text(text)
        with pytest.raises(ConfigError, match=BINDINGS_ENV):
            partition_bindings({BINDINGS_ENV: str(good)})
    with pytest.raises(ConfigError, match="not a readable JSON"):
        partition_bindings({BINDINGS_ENV: str(tmp_path / "missing.json")})
