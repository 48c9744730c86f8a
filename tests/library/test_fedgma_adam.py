"""FedGMA's soft mask under Flower's FedAdam."""

import numpy as np
from flower_messages import configure, train_reply
from flwr.serverapp.strategy import FedAdam

from fedgma.strategy import FedGMAAdam, agreement_score, mask_from_agreement

ADAM = {"eta": 0.01, "eta_l": 0.001, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}


def setup(seed=0, k=5):
    rng = np.random.default_rng(seed)
    x = {"w": rng.normal(size=(6, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
    replies = []
    counts = []
    for _ in range(k):
        y = {n: v - 0.05 * rng.normal(size=v.shape).astype(np.float32) for n, v in x.items()}
        counts.append(int(rng.integers(10, 100)))
        replies.append((y, counts[-1]))
    return x, replies


def aggregate(strategy, x, replies, rounds=2):
    """Two rounds from the same weights, so Adam's moments carry over."""
    out = None
    for server_round in range(1, rounds + 1):
        configure(strategy, x)
        msgs = [train_reply(i + 1, y, n) for i, (y, n) in enumerate(replies)]
        out, metrics = strategy.aggregate_train(server_round, msgs)
    return {k: v.numpy() for k, v in out.items()}, metrics


def test_tau_zero_is_exactly_fedadam():
    x, replies = setup()
    ours, metrics = aggregate(FedGMAAdam(mask_tau=0.0, **ADAM), x, replies)
    theirs, _ = aggregate(FedAdam(**ADAM), x, replies)
    for name in x:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-7)
    assert metrics["mask-mean"] == 1.0


def test_adam_sees_the_masked_pseudo_gradient():
    """One round computed by hand: delta = -m * g_bar, then FedAdam's first step."""
    x, replies = setup(seed=3)
    ours, metrics = aggregate(FedGMAAdam(mask_tau=0.9, **ADAM), x, replies, rounds=1)
    total = sum(n for _, n in replies)
    for name, xv in x.items():
        g = [xv.astype(np.float64) - y[name] for y, _ in replies]
        g_bar = sum(n * gk for gk, (_, n) in zip(g, replies, strict=True)) / total
        a = agreement_score(sum(np.sign(gk) for gk in g), len(g))
        m = mask_from_agreement(a, 0.9, "gma")
        delta = -m * g_bar
        m_t = (1 - ADAM["beta_1"]) * delta
        v_t = (1 - ADAM["beta_2"]) * delta**2
        eta_norm = ADAM["eta"] * np.sqrt(1 - ADAM["beta_2"] ** 2) / (1 - ADAM["beta_1"] ** 2)
        expected = xv + eta_norm * m_t / (np.sqrt(v_t) + ADAM["tau"])
        np.testing.assert_allclose(ours[name], expected, rtol=1e-4, atol=1e-6)
    assert 0 < metrics["mask-kept-fraction"] < 1


def test_adam_tau_and_mask_tau_are_separate():
    strategy = FedGMAAdam(mask_tau=None, **ADAM)
    assert strategy.mask_tau == 0.4
    assert strategy.tau == ADAM["tau"]
    assert strategy.variant == "gma"
