"""The mask math against FEDGMA.md's hand-computed checks and a naive reference."""

import numpy as np
import pytest

from fedgma.strategy import MaskedAggregator, agreement_score, mask_from_agreement


def aggregate(global_x, clients, counts, variant, tau, server_lr, weighted=False):
    agg = MaskedAggregator({"w": global_x}, variant, tau, server_lr, weighted)
    for y, n in zip(clients, counts, strict=True):
        agg.add({"w": y}, n)
    arrays, stats = agg.result()
    return arrays["w"], stats


def naive_reference(x, ys, ns, variant, tau, server_lr, weighted):
    """FEDGMA.md written out on stacked arrays, in float64."""
    x = x.astype(np.float64)
    g = np.stack([x - y.astype(np.float64) for y in ys])          # K x P
    p = np.asarray(ns, dtype=np.float64) / np.sum(ns)
    w = p if weighted else np.full(len(ys), 1.0 / len(ys))
    agreement = np.abs(np.tensordot(w, np.sign(g), axes=1))
    g_bar = np.tensordot(p, g, axes=1)
    if variant == "ws":
        mask = (agreement >= tau).astype(np.float64)
        return x - g_bar - server_lr * mask * g_bar
    mask = np.where(agreement >= tau, 1.0, agreement)
    return x - server_lr * mask * g_bar


# 4 clients, signs (+, +, +, -) of g at the one coordinate.
X = np.array([1.0], dtype=np.float32)
SIGNED_CLIENTS = [X - d for d in (0.5, 0.25, 0.125, -0.5)]  # g = +.5, +.25, +.125, -.5


def test_agreement_of_three_against_one_is_one_half():
    assert agreement_score(np.array([1 + 1 + 1 - 1]), 4) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("variant", "tau", "expected_mask"),
    [("gma", 0.4, 1.0), ("gma", 0.6, 0.5), ("ws", 0.8, 0.0)],
)
def test_spec_mask_values(variant, tau, expected_mask):
    _, stats = aggregate(X, SIGNED_CLIENTS, [1, 1, 1, 1], variant, tau, 1.0)
    assert stats.agreement_mean == pytest.approx(0.5)
    assert stats.mask_mean == pytest.approx(expected_mask)


def test_gma_soft_mask_scales_the_step():
    new, _ = aggregate(X, SIGNED_CLIENTS, [1, 1, 1, 1], "gma", 0.6, 1.0)
    g_bar = (0.5 + 0.25 + 0.125 - 0.5) / 4
    assert new[0] == pytest.approx(1.0 - 0.5 * g_bar)


def test_ws_with_zero_mask_is_fedavg():
    new, _ = aggregate(X, SIGNED_CLIENTS, [1, 1, 1, 1], "ws", 0.8, 1.0)
    assert new[0] == pytest.approx(np.mean([y[0] for y in SIGNED_CLIENTS]))


def test_identical_clients_agree_fully_and_ws_steps_further():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50).astype(np.float32)
    g = rng.normal(size=50).astype(np.float32)
    eta = 0.1
    new, stats = aggregate(x, [x - g] * 3, [5, 7, 9], "ws", 0.8, eta)
    assert stats.kept_fraction == 1.0 and stats.mask_mean == 1.0 and stats.agreement_mean == 1.0
    np.testing.assert_allclose(new, x - (1 + eta) * g, rtol=1e-5, atol=1e-6)


def test_a_zero_pseudo_gradient_lowers_agreement():
    x = np.array([1.0], dtype=np.float32)
    all_agree = [x - 0.1, x - 0.2, x - 0.3]
    one_zero = [x - 0.1, x - 0.2, x.copy()]
    _, full = aggregate(x, all_agree, [1, 1, 1], "gma", 1.0, 1.0)
    _, lowered = aggregate(x, one_zero, [1, 1, 1], "gma", 1.0, 1.0)
    assert full.agreement_mean == pytest.approx(1.0)
    assert lowered.agreement_mean == pytest.approx(2 / 3)


def test_threshold_ties_are_exact():
    # 17 of 20 agree: A = 14/20 = 0.7, which float32 rounds below 0.7.
    x = np.zeros(1, dtype=np.float32)
    clients = [x - 1.0] * 17 + [x + 1.0] * 3
    _, stats = aggregate(x, clients, [1] * 20, "ws", 0.7, 1.0)
    assert stats.kept_fraction == 1.0


def test_mask_from_agreement_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        mask_from_agreement(np.array([0.5]), 0.5, "adam")


@pytest.mark.parametrize("variant", ["ws", "gma"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_equals_naive_stacked_reference(variant, weighted, seed):
    rng = np.random.default_rng(seed)
    k, p = int(rng.integers(2, 12)), 2000
    x = rng.normal(size=p).astype(np.float32)
    # Shared drift plus noise, so that agreement takes many values.
    drift = rng.normal(size=p)
    ys = [(x - 0.1 * (drift + rng.normal(size=p))).astype(np.float32) for _ in range(k)]
    ys[0][:10] = x[:10]  # some exact zeros
    ns = rng.integers(1, 500, size=k).tolist()
    tau = float(rng.choice([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]))
    server_lr = float(rng.choice([0.0, 0.1, 1.0]))
    new, stats = aggregate(x, ys, ns, variant, tau, server_lr, weighted)
    expected = naive_reference(x, ys, ns, variant, tau, server_lr, weighted)
    np.testing.assert_allclose(new, expected, rtol=1e-5, atol=1e-6)
    assert 0.0 <= stats.kept_fraction <= stats.mask_mean + 1e-12 <= 1.0 + 1e-12
    assert stats.num_coordinates == p


def test_integer_arrays_are_averaged_not_masked():
    x = {"w": np.zeros(3, dtype=np.float32), "count": np.array(10, dtype=np.int64)}
    agg = MaskedAggregator(x, "ws", 0.8, 1.0)
    agg.add({"w": np.ones(3, dtype=np.float32), "count": np.array(13, dtype=np.int64)}, 1)
    agg.add({"w": np.ones(3, dtype=np.float32), "count": np.array(16, dtype=np.int64)}, 3)
    arrays, stats = agg.result()
    assert arrays["count"].dtype == np.int64 and int(arrays["count"]) == 15  # (13 + 48) / 4
    assert stats.num_coordinates == 3


def test_result_without_clients_is_an_error():
    with pytest.raises(ValueError, match="at least one client"):
        MaskedAggregator({"w": np.zeros(2)}, "ws", 0.8, 1.0).result()


def test_weighted_agreement_counts_examples():
    # Signs (+, +, -) with 1, 1 and 2 examples: unweighted A = 1/3, weighted A = 0.
    x = np.zeros(1, dtype=np.float32)
    clients = [x - 1.0, x - 1.0, x + 1.0]
    _, plain = aggregate(x, clients, [1, 1, 2], "gma", 1.0, 1.0, weighted=False)
    _, weighted = aggregate(x, clients, [1, 1, 2], "gma", 1.0, 1.0, weighted=True)
    assert plain.agreement_mean == pytest.approx(1 / 3)
    assert weighted.agreement_mean == pytest.approx(0.0)


def test_read_only_replies_are_folded_and_left_unchanged():
    x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    y = np.frombuffer(np.array([0.5, 2.5, 3.0], dtype=np.float32).tobytes(), dtype=np.float32)
    assert not y.flags.writeable  # as a reply's bytes are
    new, stats = aggregate(x, [y, y], [1, 1], "ws", 0.8, 1.0)
    # g = x - y = [0.5, -0.5, 0]: both clients agree on the first two coordinates, A = 0 on the third.
    np.testing.assert_allclose(new, [0.0, 3.0, 3.0])
    assert stats.kept_fraction == pytest.approx(2 / 3)
    np.testing.assert_array_equal(y, [0.5, 2.5, 3.0])
