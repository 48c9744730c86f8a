"""Each run setting is declared once (fedgma/app/settings.py); the files made from it are current."""

import re
from pathlib import Path

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvg
from run_settings import DEFAULTS, settings

from fedgma.app.settings import (
    ConfigError,
    RunConfig,
    defaults,
    markdown_table,
    not_result_settings,
    parse_run_config,
    pyproject_block,
    specs,
)
from fedgma.app.strategies import STRATEGIES, build_strategy, describe
from fedgma.app.task import TASKS, make_task
from fedgma.loop import checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_holds_the_generated_block_and_its_defaults():
    text = (ROOT / "pyproject.toml").read_text()
    body = text.split("[tool.flwr.app.config]\n", 1)[1].split("\n[", 1)[0]
    assert body == pyproject_block(), "run `fedgma settings`"
    assert defaults() == DEFAULTS


def test_docs_hold_the_generated_table():
    text = (ROOT / "docs" / "settings.md").read_text()
    block = re.search(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->", text, re.S)
    assert block is not None and block.group(1) == markdown_table(), "run `fedgma settings`"


@pytest.mark.parametrize("key", sorted(specs()))
def test_every_declared_bound_is_enforced_and_names_its_key(key):
    _, spec = specs()[key]
    bad: list[object] = [None]  # a missing value's stand-in: every kind refuses None
    if spec.kind in ("int", "float"):
        bad += ["1"]
        if spec.low is not None:
            bad.append(spec.low if spec.low_open else spec.low - 1)
        if spec.high is not None:
            bad.append(spec.high if spec.high_open else spec.high + 1)
    elif spec.kind == "choice":
        bad += ["no-such-" + key]
    elif spec.kind == "flag":
        bad += [1, "true"]
    for value in bad:
        with pytest.raises(ConfigError, match=f"'{key}'"):
            parse_run_config({**DEFAULTS, key: value})


def test_a_missing_key_is_named_for_every_setting():
    for key in DEFAULTS:
        raw = dict(DEFAULTS)
        del raw[key]
        with pytest.raises(ConfigError, match=f"missing key '{key}'"):
            parse_run_config(raw)


def test_the_flat_record_and_the_result_settings():
    config = parse_run_config(settings(strategy="fedprox", task="ten-class", seed=3, run_name="a"))
    flat = config.flat()
    assert (flat["strategy"], flat["task"], flat["seed"], flat["run_name"]) == ("fedprox", "ten-class", 3, "a")
    assert set(flat) == {key.replace("-", "_") for key in DEFAULTS}
    result = config.result_settings()
    assert "seed" in result and "tau" in result
    assert not {"run-name", "output-dir", "resume", "round-timeout", "num-server-rounds"} & set(result)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_strategy_builds_and_has_a_label(name):
    config = parse_run_config(settings(strategy=name))
    strategy = build_strategy(config)
    assert isinstance(strategy, FedAvg)
    assert describe(config.strategy).startswith(name.split("-")[0])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_registered_task_builds_a_model(name):
    config = parse_run_config(settings(task=name))
    task = make_task(config.task)
    model = task.model(seed=0)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_saved_record_reads_back_to_the_same_settings():
    config = parse_run_config(settings(strategy="fedgma-adam", tau=0.3, output_dir="x/y", label_noise=0.25))
    assert RunConfig.from_flat({**config.flat(), "run-id": 7}) == config
    auto = parse_run_config(DEFAULTS)
    assert RunConfig.from_flat(auto.flat()) == auto and auto.flat()["tau"] is None
    assert not_result_settings() == {key for key in DEFAULTS if key not in auto.result_settings()}


def test_fedgma_settings_rewrites_a_stale_file_and_check_says_so(tmp_path):
    from fedgma.lab.settings_files import write_settings_files

    (tmp_path / "docs").mkdir()
    pyproject = (ROOT / "pyproject.toml").read_text().replace("local-epochs = 3 ", "local-epochs = 9 ")
    (tmp_path / "pyproject.toml").write_text(pyproject)
    (tmp_path / "docs" / "settings.md").write_text("# x\n<!-- settings:begin -->\nold\n<!-- settings:end -->\n")
    stale = write_settings_files(tmp_path, check=True)
    assert stale == [tmp_path / "pyproject.toml", tmp_path / "docs" / "settings.md"]
    assert "local-epochs = 9 " in (tmp_path / "pyproject.toml").read_text()  # --check writes nothing
    write_settings_files(tmp_path)
    assert (tmp_path / "pyproject.toml").read_text() == (ROOT / "pyproject.toml").read_text()
    assert write_settings_files(tmp_path, check=True) == []


def saved_checkpoint(round_, arrays, settings_):
    from fedgma.loop.outcome import RoundOutcome

    return checkpoint.Checkpoint(round=round_, arrays=arrays, strategy_state={}, wall_seconds=12.5, settings=settings_,
                           identity={"strategy": {"class": "x"}}, history=[RoundOutcome(0).to_json()])


def test_resume_refuses_settings_that_change_the_result(tmp_path):
    config = parse_run_config(settings(tau=0.6, seed=3, num_server_rounds=5))
    saved = saved_checkpoint(2, {"w": np.zeros(2, np.float32)}, settings_=config.result_settings())

    def check(config):
        checkpoint.check_resumable(saved, config.result_settings(), config.federation.num_server_rounds)

    check(parse_run_config(settings(tau=0.6, seed=3, num_server_rounds=9, round_timeout=30.0, run_name="x")))
    with pytest.raises(checkpoint.CheckpointError, match=r"seed: 3 -> 4.*tau: 0.6 -> 0.7"):
        check(parse_run_config(settings(tau=0.7, seed=4, num_server_rounds=5)))
    with pytest.raises(checkpoint.CheckpointError, match="asks for 1 rounds but the checkpoint already has 2"):
        check(parse_run_config(settings(tau=0.6, seed=3, num_server_rounds=1)))



@pytest.mark.parametrize(("overrides", "key"), [
    ({"strategy": "fedavg", "mask-control": "random"}, "mask-control"),
    ({"strategy": "fedprox", "mask-control": "uniform"}, "mask-control"),
    ({"task": "ten-class", "shortcut": "marker"}, "shortcut"),
    ({"task": "ten-class", "shortcut-reversed-share": 0.5}, "shortcut-reversed-share"),
    ({"task": "binary", "color-class-correlation": 0.8}, "color-class-correlation"),
])
def test_a_setting_the_run_would_not_read_is_refused(overrides, key):
    with pytest.raises(ConfigError, match=key):
        parse_run_config({**defaults(), **overrides})
    assert parse_run_config({**defaults(), "strategy": "fedgma-adam", "mask-control": "random"})


@pytest.mark.parametrize(("key", "said"), [
    ("server_lr", "unknown key(s) ['server_lr']; did you mean 'server-lr' for 'server_lr'"),
    ("mask-tau", "unknown key(s) ['mask-tau']; did you mean 'tau' for 'mask-tau'"),  # FedGMA's mask_tau
    ("nosuchkey", "unknown key(s) ['nosuchkey']"),
])
def test_an_unknown_run_config_key_is_refused_with_the_key_it_is_close_to(key, said):
    with pytest.raises(ConfigError) as refused:
        parse_run_config({**DEFAULTS, key: 1})
    assert str(refused.value) == f"run config: {said}"
