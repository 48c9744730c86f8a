"""Mask-selectivity controls ("When does the mask help?"): the random and uniform controls
and the mask_metrics observer, against masks computed here with plain NumPy."""

import numpy as np
import pytest
from flower_messages import configure, train_reply
from flwr.serverapp.strategy import FedAdam

from fedgma.strategy import MASK_CONTROLS, FedGMA, FedGMAAdam, MaskedAggregator, resolve_mask_control
from fedgma.strategy.validation import check_replies

TAU = {"ws": 0.6, "gma": 0.6}
LR = 0.5


def model(rng):
    """Float arrays around an integer counter (array numbers 0, 1, 2, 3 in this order)."""
    return {
        "big": rng.normal(size=(40, 50)).astype(np.float32),
        "steps": np.array(7, dtype=np.int64),
        "small": rng.normal(size=(3, 4)).astype(np.float32),
        "bias": rng.normal(size=6).astype(np.float32),
    }


def clients(rng, x, k=5):
    """Updates sharing a direction per coordinate plus noise: agreement varies across coordinates."""
    direction = {n: rng.normal(size=v.shape) for n, v in x.items() if v.dtype.kind == "f"}
    out = []
    for _ in range(k):
        y = {n: (v - 0.02 * (direction[n] + 1.2 * rng.normal(size=v.shape))).astype(v.dtype)
             if n in direction else v + 1 for n, v in x.items()}
        out.append((y, float(rng.integers(10, 100))))
    return out


def reference(x, replies, variant, tau):
    """Per float array: the averaged pseudo-gradient, the agreement (1/K) and its FedGMA mask, in float64."""
    total = sum(n for _, n in replies)
    out = {}
    for name, xv in x.items():
        if xv.dtype.kind != "f":
            continue
        g = [xv.astype(np.float64) - y[name].astype(np.float64) for y, _ in replies]
        g_bar = sum(n * gk for gk, (_, n) in zip(g, replies, strict=True)) / total
        a = np.abs(sum(np.sign(gk) for gk in g)) / len(g)
        mask = (a >= tau).astype(np.float64) if variant == "ws" else np.where(a >= tau, 1.0, a)
        out[name] = (g_bar, a, mask)
    return out


def expected_step(xv, g_bar, mask, variant, server_lr=LR):
    if variant == "ws":
        return xv - g_bar - server_lr * mask * g_bar
    return xv - server_lr * mask * g_bar


class Recorder:
    """A mask_metrics observer: keeps copies of the masks it was shown, returns a metric."""

    def __init__(self):
        self.calls = []

    def __call__(self, masks):
        self.calls.append({name: np.array(mask) for name, mask in masks.items()})
        return {"big-kept-columns": float((masks["big"] == 1).all(axis=0).mean())}


def aggregate(x, replies, variant, weighted=False, server_round=1, **options):
    agg = MaskedAggregator(x, variant, TAU[variant], LR, weighted, server_round=server_round, **options)
    agg.add_many(replies)
    return agg.result()


def setup(seed=0):
    rng = np.random.default_rng(seed)
    x = model(rng)
    return x, clients(rng, x)


@pytest.mark.parametrize("variant", ["ws", "gma"])
def test_the_observer_sees_the_agreement_mask_and_changes_no_bit(variant):
    x, replies = setup()
    plain, plain_stats = aggregate(x, replies, variant)
    seen = Recorder()
    observed, stats = aggregate(x, replies, variant, mask_metrics=seen)
    for name in x:
        assert observed[name].dtype == plain[name].dtype
        assert observed[name].tobytes() == plain[name].tobytes()
    assert (stats.kept_fraction, stats.mask_mean, stats.agreement_mean) == (
        plain_stats.kept_fraction, plain_stats.mask_mean, plain_stats.agreement_mean)
    assert len(seen.calls) == 1
    masks = seen.calls[0]
    ref = reference(x, replies, variant, TAU[variant])
    assert masks.keys() == ref.keys() == {"big", "small", "bias"}  # floating-point arrays only
    for name, (_, _, mask) in ref.items():
        assert masks[name].shape == x[name].shape
        np.testing.assert_allclose(masks[name], mask, rtol=1e-6)
    assert 0 < stats.kept_fraction < 1
    assert stats.observed == {"big-kept-columns": float((ref["big"][2] == 1).all(axis=0).mean())}


@pytest.mark.parametrize("variant", ["ws", "gma"])
def test_weighted_agreement_with_an_observer_changes_no_bit(variant):
    x, replies = setup(1)
    plain, _ = aggregate(x, replies, variant, weighted=True)
    observed, _ = aggregate(x, replies, variant, weighted=True, mask_metrics=lambda masks: {})
    for name in x:
        assert observed[name].tobytes() == plain[name].tobytes()


@pytest.mark.parametrize("variant", ["ws", "gma"])
def test_random_keeps_each_arrays_mask_values_at_other_places(variant):
    x, replies = setup(2)
    ref = reference(x, replies, variant, TAU[variant])
    agreement_seen, random_seen = Recorder(), Recorder()
    _, agreement_stats = aggregate(x, replies, variant, mask_metrics=agreement_seen)
    new, stats = aggregate(x, replies, variant, mask_control="random", mask_seed=11, mask_metrics=random_seen)
    agreement_masks, random_masks = agreement_seen.calls[0], random_seen.calls[0]
    for name, (g_bar, a, mask) in ref.items():
        shuffled = random_masks[name]
        assert shuffled.shape == x[name].shape
        # Exactly as many kept coordinates as A >= tau, and the same values, elsewhere.
        assert np.count_nonzero(shuffled == 1) == np.count_nonzero(a >= TAU[variant])
        np.testing.assert_array_equal(np.sort(shuffled, axis=None), np.sort(agreement_masks[name], axis=None))
        np.testing.assert_allclose(np.sort(shuffled, axis=None), np.sort(mask, axis=None), rtol=1e-6)
        # The step applied is the shuffled mask's.
        np.testing.assert_allclose(new[name], expected_step(x[name], g_bar, shuffled, variant), rtol=1e-5, atol=1e-6)
    assert not np.array_equal(random_masks["big"], agreement_masks["big"])
    assert stats.kept_fraction == agreement_stats.kept_fraction
    assert stats.mask_mean == agreement_stats.mask_mean
    assert stats.agreement_mean == agreement_stats.agreement_mean
    assert new["steps"] == np.rint(sum(y["steps"] * n for y, n in replies) / sum(n for _, n in replies))


def test_random_masks_come_from_the_seed_the_round_and_the_array_number():
    x, replies = setup(3)
    agreement = Recorder()
    aggregate(x, replies, "gma", mask_metrics=agreement)

    def masks(seed, server_round):
        seen = Recorder()
        aggregate(x, replies, "gma", server_round=server_round, mask_control="random", mask_seed=seed,
                  mask_metrics=seen)
        return seen.calls[0]

    first = masks(5, 3)
    for index, name in enumerate(x):  # the array number counts every array in the model's order
        if name in first:
            permutation = np.random.default_rng([5, 3, index]).permutation(agreement.calls[0][name].reshape(-1))
            np.testing.assert_array_equal(first[name], permutation.reshape(x[name].shape))
    again = masks(5, 3)
    assert all(np.array_equal(first[name], again[name]) for name in first)
    assert not np.array_equal(first["big"], masks(5, 4)["big"])
    assert not np.array_equal(first["big"], masks(6, 3)["big"])


@pytest.mark.parametrize("variant", ["ws", "gma"])
def test_uniform_puts_the_rounds_mean_mask_everywhere(variant):
    x, replies = setup(4)
    ref = reference(x, replies, variant, TAU[variant])
    mean = sum(mask.sum() for _, _, mask in ref.values()) / sum(mask.size for _, _, mask in ref.values())
    assert 0 < mean < 1
    seen = Recorder()
    new, stats = aggregate(x, replies, variant, mask_control="uniform", mask_metrics=seen)
    _, agreement_stats = aggregate(x, replies, variant)
    for name, (g_bar, _, _) in ref.items():
        mask = seen.calls[0][name]
        assert mask.shape == x[name].shape and mask.dtype == x[name].dtype
        np.testing.assert_allclose(mask, mean, rtol=1e-6)
        np.testing.assert_allclose(new[name], expected_step(x[name], g_bar, mean, variant), rtol=1e-5, atol=1e-6)
    assert stats.mask_mean == pytest.approx(mean, rel=1e-6)  # gma: A in float32
    assert stats.kept_fraction == 0.0  # no coordinate has mask value 1
    assert stats.agreement_mean == agreement_stats.agreement_mean


def replies_as_messages(replies):
    return [train_reply(i + 1, y, n, train_loss=0.1 * i) for i, (y, n) in enumerate(replies)]


@pytest.mark.parametrize("variant", ["ws", "gma"])
def test_fedgma_with_an_observer_only_gives_the_default_weights_and_adds_its_metrics(variant):
    x, replies = setup(5)
    messages = replies_as_messages(replies)
    default = FedGMA(variant=variant, mask_tau=TAU[variant], server_lr=LR)
    configure(default, x)
    plain, plain_metrics = default.aggregate_train(1, messages)
    seen = Recorder()
    observed = FedGMA(variant=variant, mask_tau=TAU[variant], server_lr=LR, mask_metrics=seen)
    configure(observed, x)
    arrays, metrics = observed.aggregate_train(1, messages)
    for name in x:
        assert arrays[name].numpy().tobytes() == plain[name].numpy().tobytes()
    assert len(seen.calls) == 1
    ref = reference(x, replies, variant, TAU[variant])
    assert metrics["big-kept-columns"] == float((ref["big"][2] == 1).all(axis=0).mean())
    for key, value in plain_metrics.items():
        assert metrics[key] == value


def test_fedgma_random_control_through_aggregate_train_and_aggregate_checked():
    x, replies = setup(6)
    messages = replies_as_messages(replies)
    ref = reference(x, replies, "ws", TAU["ws"])
    train_seen, checked_seen = Recorder(), Recorder()
    standalone = FedGMA(variant="ws", mask_tau=TAU["ws"], server_lr=LR, mask_control="random", mask_seed=2,
                        mask_metrics=train_seen)
    configure(standalone, x)
    ours, metrics = standalone.aggregate_train(7, messages)
    handed = FedGMA(variant="ws", mask_tau=TAU["ws"], server_lr=LR, mask_control="random", mask_seed=2,
                    mask_metrics=checked_seen)
    configure(handed, x)
    checked, refused = check_replies(messages, x, handed.weighted_by_key, handed.bounds)
    assert not refused
    theirs, checked_metrics = handed.aggregate_checked(7, checked)
    for name in x:
        np.testing.assert_array_equal(ours[name].numpy(), theirs[name].numpy())
    for name, (g_bar, a, _) in ref.items():
        mask = train_seen.calls[0][name]
        np.testing.assert_array_equal(mask, checked_seen.calls[0][name])
        assert np.count_nonzero(mask == 1) == np.count_nonzero(a >= TAU["ws"])
        np.testing.assert_allclose(ours[name].numpy(), expected_step(x[name], g_bar, mask, "ws"),
                                   rtol=1e-5, atol=1e-6)
    kept = sum(np.count_nonzero(a >= TAU["ws"]) for _, a, _ in ref.values()) / sum(a.size for _, a, _ in ref.values())
    assert metrics["mask-kept-fraction"] == pytest.approx(kept)
    assert checked_metrics["mask-kept-fraction"] == metrics["mask-kept-fraction"]
    assert checked_metrics["big-kept-columns"] == metrics["big-kept-columns"]


def test_the_observer_is_called_once_when_a_bad_reply_forces_a_second_fold():
    x, replies = setup(7)
    nan = {name: value.copy() for name, value in x.items()}
    nan["big"][0, 0] = np.nan
    seen, alone_seen = Recorder(), Recorder()
    strategy = FedGMA(variant="gma", mask_tau=TAU["gma"], mask_control="uniform", mask_metrics=seen)
    configure(strategy, x)
    mixed, metrics = strategy.aggregate_train(1, [*replies_as_messages(replies), train_reply(99, nan, 10)])
    alone = FedGMA(variant="gma", mask_tau=TAU["gma"], mask_control="uniform", mask_metrics=alone_seen)
    configure(alone, x)
    good, _ = alone.aggregate_train(1, replies_as_messages(replies))
    assert metrics["replies-dropped"] == 1 and len(seen.calls) == 1
    for name in x:
        np.testing.assert_array_equal(mixed[name].numpy(), good[name].numpy())
    for name, mask in seen.calls[0].items():
        np.testing.assert_array_equal(mask, alone_seen.calls[0][name])


def test_a_client_metric_of_the_observers_name_wins():
    x, replies = setup(8)
    messages = [train_reply(i + 1, y, n, spread=1.0) for i, (y, n) in enumerate(replies)]
    strategy = FedGMA(variant="gma", mask_metrics=lambda masks: {"spread": 0.25})
    configure(strategy, x)
    _, metrics = strategy.aggregate_train(1, messages)
    assert metrics["spread"] == 1.0 and metrics["fedgma-spread"] == 0.25


def test_fedgma_adam_sees_the_uniform_masked_pseudo_gradient():
    adam = {"eta": 0.01, "eta_l": 0.001, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}
    x, replies = setup(9)
    ref = reference(x, replies, "gma", 0.4)
    mean = sum(mask.sum() for _, _, mask in ref.values()) / sum(mask.size for _, _, mask in ref.values())
    seen = Recorder()
    strategy = FedGMAAdam(mask_tau=0.4, mask_control="uniform", mask_metrics=seen, **adam)
    assert (strategy.mask_control, strategy.mask_seed, strategy.mask_metrics) == ("uniform", 0, seen)
    configure(strategy, x)
    out, metrics = strategy.aggregate_train(1, replies_as_messages(replies))
    for name, (g_bar, _, _) in ref.items():
        delta = -mean * g_bar
        m_t = (1 - adam["beta_1"]) * delta
        v_t = (1 - adam["beta_2"]) * delta**2
        eta_norm = adam["eta"] * np.sqrt(1 - adam["beta_2"] ** 2) / (1 - adam["beta_1"] ** 2)
        expected = x[name] + eta_norm * m_t / (np.sqrt(v_t) + adam["tau"])
        np.testing.assert_allclose(out[name].numpy(), expected, rtol=1e-4, atol=1e-6)
    assert metrics["mask-mean"] == pytest.approx(mean)
    assert "big-kept-columns" in metrics and len(seen.calls) == 1


def test_fedgma_adam_with_an_observer_only_is_its_default():
    adam = {"eta": 0.01, "eta_l": 0.001, "tau": 1e-3}
    x, replies = setup(10)
    outs = []
    for options in ({}, {"mask_metrics": lambda masks: {}}):
        strategy = FedGMAAdam(**options, **adam)
        configure(strategy, x)
        outs.append(strategy.aggregate_train(1, replies_as_messages(replies))[0])
    for name in x:
        np.testing.assert_array_equal(outs[0][name].numpy(), outs[1][name].numpy())
    assert isinstance(FedGMAAdam(**adam), FedAdam)


@pytest.mark.parametrize("build", [FedGMA, lambda **kw: FedGMAAdam(**kw),
                                   lambda **kw: MaskedAggregator({}, "ws", 0.5, 1.0, server_round=1, **kw)],
                         ids=["fedgma", "fedgma-adam", "aggregator"])
def test_bad_control_settings_are_refused(build):
    with pytest.raises(ValueError, match=r"mask_control must be one of \('none', 'random', 'uniform'\).*'bogus'"):
        build(mask_control="bogus")
    for seed in (-1, True, 1.5):
        with pytest.raises(ValueError, match="mask_seed"):
            build(mask_control="random", mask_seed=seed)
    with pytest.raises(TypeError, match="mask_metrics"):
        build(mask_metrics=3)
    assert MASK_CONTROLS == ("none", "random", "uniform")
    assert resolve_mask_control("uniform", 4) == ("uniform", 4)


def test_random_needs_the_round_number():
    with pytest.raises(ValueError, match="server_round"):
        MaskedAggregator({}, "gma", 0.5, 1.0, mask_control="random")


@pytest.mark.parametrize(
    ("returned", "error", "message"),
    [
        ({"first-layer-kept": float("nan")}, ValueError, "'first-layer-kept'"),
        ({"first-layer-kept": np.float32(np.inf)}, ValueError, "'first-layer-kept'"),
        ({"first-layer-kept": "half"}, TypeError, "'first-layer-kept'"),
        ({"first-layer-kept": True}, TypeError, "'first-layer-kept'"),
        ([0.5], TypeError, "mapping"),
        ({"mask-mean": 0.5}, ValueError, "'mask-mean'"),
    ],
)
def test_bad_observer_values_raise_an_error_naming_the_metric(returned, error, message):
    x, replies = setup(11)
    strategy = FedGMA(variant="gma", mask_metrics=lambda masks: returned)
    configure(strategy, x)
    with pytest.raises(error, match=message):
        strategy.aggregate_train(1, replies_as_messages(replies))


def test_the_observer_gets_read_only_masks_and_numbers_come_back_as_floats():
    x, replies = setup(12)

    def observer(masks):
        with pytest.raises(ValueError, match="read-only"):
            masks["big"][0, 0] = 5.0
        return {"count": np.int64(3), "share": np.float32(0.5)}

    _, stats = aggregate(x, replies, "ws", mask_metrics=observer)
    assert stats.observed == {"count": 3.0, "share": 0.5}
    assert all(type(value) is float for value in stats.observed.values())


def test_the_summary_names_a_control(monkeypatch):
    lines = []
    monkeypatch.setattr("fedgma.strategy.fedgma.log", lambda level, msg, *args: lines.append(msg % args))
    FedGMA(mask_control="random", mask_seed=4).summary()
    assert any("Mask control: random (seed 4)" in line for line in lines)
    lines.clear()
    FedGMA().summary()
    assert not any("Mask control" in line for line in lines)
