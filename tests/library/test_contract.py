"""FedGMA as a drop-in for Flower's FedAvg: at its FedAvg-equivalent settings it must do what
FedAvg does with the replies Flower's own strategy tests use (fractional weights, 0-d arrays,
error and empty replies, another float dtype), keep FedAvg's positional arguments, and never
overwrite a client's metric. Each check runs FedAvg itself on the same replies as the reference.
"""

import logging

import numpy as np
import pytest
from flower_messages import configure, error_reply, global_record, train_reply
from flwr.app import MetricRecord
from flwr.serverapp.strategy import FedAdam, FedAvg

from fedgma.strategy import FedGMA, FedGMAAdam

# FedGMA settings whose update is FedAvg's average: ws with no extra step, gma with every
# coordinate kept (tau = 0: the mask is 1 everywhere).
FEDAVG_EQUIVALENT = {"ws-lr0": {"variant": "ws", "server_lr": 0.0}, "gma-tau0": {"variant": "gma", "mask_tau": 0.0}}


def model(rng) -> dict[str, np.ndarray]:
    return {
        "w": rng.normal(size=(3, 4)).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
        "scale": np.array(1.5, dtype=np.float32),  # a 0-d array
    }


def moved(rng, x: dict[str, np.ndarray], dtype=None) -> dict[str, np.ndarray]:
    return {k: (v + 0.1 * rng.normal(size=v.shape)).astype(dtype or v.dtype) for k, v in x.items()}


def aggregate(strategy, x, replies):
    configure(strategy, x)
    arrays, metrics = strategy.aggregate_train(1, replies)
    return (None if arrays is None else {k: a.numpy() for k, a in arrays.items()}), metrics


@pytest.fixture(params=list(FEDAVG_EQUIVALENT), ids=list(FEDAVG_EQUIVALENT))
def fedgma(request):
    return FedGMA(**FEDAVG_EQUIVALENT[request.param])


@pytest.mark.parametrize("weights", [(0.25, 0.5, 0.25), (1.5, 2.0, 0.5), (3, 1, 2)])
def test_weighted_average_with_fractional_weights_as_fedavg(fedgma, weights):
    rng = np.random.default_rng(0)
    x = model(rng)
    replies = [train_reply(i + 1, moved(rng, x), w) for i, w in enumerate(weights)]
    ours, metrics = aggregate(fedgma, x, replies)
    theirs, _ = aggregate(FedAvg(), x, replies)
    expected = {k: sum(w * r.content["arrays"][k].numpy() for w, r in zip(weights, replies, strict=True))
                / sum(weights) for k in x}  # computed independently of both strategies
    for name in x:
        assert ours[name].shape == x[name].shape and ours[name].dtype == x[name].dtype  # 0-d stays 0-d
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours[name], expected[name], rtol=1e-5, atol=1e-6)
        assert not np.array_equal(ours[name], x[name])  # the model moved
    assert metrics["replies-used"] == len(weights) and metrics["replies-dropped"] == 0


def size_skewed(rng) -> list[float]:
    """10 honest clients: 3 hold 95 % of the examples, 7 share the rest."""
    return [9500 / 3] * 3 + [500 / 7] * 7


def dirichlet_sizes(alpha: float):
    """Client sizes of a label-Dirichlet split (flwr-datasets' DirichletPartitioner's rule):
    10 classes of 6,000 examples, each spread over 10 clients by Dir(alpha) proportions."""
    def sizes(rng) -> list[int]:
        shares = rng.dirichlet([alpha] * 10, size=10)  # class x client
        return [max(int(n), 1) for n in (6000 * shares).sum(axis=0)]
    return sizes


@pytest.mark.parametrize("sizes", [size_skewed, dirichlet_sizes(0.5), dirichlet_sizes(0.1)],
                         ids=["3-of-10-hold-95%", "dirichlet-0.5", "dirichlet-0.1"])
def test_honest_size_skewed_federations_get_fedavgs_result(fedgma, sizes):
    """At its FedAvg-equivalent settings and default arguments, FedGMA keeps every honest
    client, however skewed the sizes, and averages exactly as FedAvg; so does the round loop,
    around FedGMA or around Flower's FedAvg."""
    from flower_messages import CannedGrid, set_task_identity

    from fedgma.loop import RoundLoop

    rng = np.random.default_rng(11)
    x = model(rng)
    counts = sizes(rng)
    assert max(counts) > 10 * sorted(counts)[len(counts) // 2 - 1] or sizes is not size_skewed
    replies = [train_reply(i + 1, moved(rng, x), n) for i, n in enumerate(counts)]
    ours, metrics = aggregate(fedgma, x, replies)
    theirs, _ = aggregate(FedAvg(), x, replies)
    assert metrics["replies-used"] == 10 and metrics["replies-clipped"] == metrics["replies-dropped"] == 0
    for name in x:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6)
    set_task_identity()
    again = type(fedgma)(variant=fedgma.variant, mask_tau=fedgma.mask_tau, server_lr=fedgma.server_lr)
    for strategy in (again, FedAvg()):
        grid = CannedGrid(replies)
        result = RoundLoop(strategy, grid, timeout=5, poll_interval=None).start(global_record(x), num_rounds=1)
        assert result.train_metrics_clientapp[1].get("replies-used", 10) == 10
        for name in x:
            np.testing.assert_allclose(result.arrays[name].numpy(), theirs[name], rtol=1e-5, atol=1e-6)


def test_error_replies_are_skipped_as_fedavg_skips_them(fedgma):
    rng = np.random.default_rng(1)
    x = model(rng)
    replies = [train_reply(1, moved(rng, x), 10), error_reply(2), train_reply(3, moved(rng, x), 30)]
    ours, metrics = aggregate(fedgma, x, replies)
    theirs, _ = aggregate(FedAvg(), x, replies)
    for name in x:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6)
    assert metrics["replies-failed"] == 1 and metrics["replies-used"] == 2


def test_no_replies_or_only_errors_leave_the_model_as_fedavg_does(fedgma):
    x = model(np.random.default_rng(2))
    for replies in ([], [error_reply(1), error_reply(2)]):
        assert aggregate(fedgma, x, replies) == (None, None)
        assert aggregate(FedAvg(), x, replies) == (None, None)


def test_float64_replies_to_a_float32_model_are_cast_and_logged_not_dropped(fedgma):
    rng = np.random.default_rng(3)
    x = model(rng)
    replies = [train_reply(1, moved(rng, x, np.float64), 10), train_reply(2, moved(rng, x), 20)]
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("flwr").addHandler(handler)
    try:
        ours, metrics = aggregate(fedgma, x, replies)
    finally:
        logging.getLogger("flwr").removeHandler(handler)
    theirs, _ = aggregate(FedAvg(), x, replies)
    assert metrics["replies-used"] == 2
    for name in x:
        assert ours[name].dtype == np.float32  # the model keeps its dtypes
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6)
    assert any("cast to the model's dtypes" in r.getMessage() and "float64 -> float32" in r.getMessage()
               for r in records)


def test_a_float_for_an_integer_array_is_still_refused():
    rng = np.random.default_rng(4)
    x = {**model(rng), "steps": np.array(7, dtype=np.int64)}
    bad = {**moved(rng, x), "steps": np.array(7.5)}
    _, metrics = aggregate(FedGMA(), x, [train_reply(1, bad, 10), train_reply(2, moved(rng, x), 10)])
    assert metrics["replies-used"] == 1 and metrics["replies-dropped"] == 1


def test_client_metrics_of_the_same_name_are_kept(fedgma):
    rng = np.random.default_rng(5)
    x = model(rng)
    replies = [train_reply(i, moved(rng, x), 10, **{"mask-mean": 0.25, "train-loss": 1.0}) for i in (1, 2)]
    _, metrics = aggregate(fedgma, x, replies)
    assert metrics["mask-mean"] == pytest.approx(0.25)  # the clients' own, averaged as FedAvg would
    # FedGMA's own, renamed: with these masks (binary, or all ones) its mean is the kept fraction.
    assert metrics["fedgma-mask-mean"] == pytest.approx(metrics["mask-kept-fraction"])
    assert 0 < metrics["mask-kept-fraction"] <= 1  # no collision: under its own name
    assert isinstance(metrics, MetricRecord)


def test_positional_arguments_are_fedavgs():
    args = (0.5, 0.25, 3, 2, 4)  # fraction_train, fraction_evaluate, min_train/evaluate/available nodes
    a, b = FedGMA(*args), FedAvg(*args)
    for name in ("fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes",
                 "min_available_nodes"):
        assert getattr(a, name) == getattr(b, name)
    with pytest.raises(TypeError):  # FedAdam takes keywords only, and so does FedGMAAdam
        FedGMAAdam(0.5)


def test_current_arrays_takes_an_array_record_as_configure_train_receives_it():
    rng = np.random.default_rng(9)
    x = model(rng)
    replies = [train_reply(i, moved(rng, x), 10 * i) for i in (1, 2)]
    strategy = FedGMA(variant="ws", server_lr=0.0)
    strategy.current_arrays = global_record(x)  # as a user resuming by hand would
    ours, _ = strategy.aggregate_train(1, replies)
    theirs, _ = aggregate(FedAvg(), x, replies)
    for name in x:
        np.testing.assert_allclose(ours[name].numpy(), theirs[name], rtol=1e-5, atol=1e-6)


def test_aggregate_train_before_configure_train_says_what_to_do():
    rng = np.random.default_rng(6)
    x = model(rng)
    with pytest.raises(RuntimeError, match="before configure_train"):
        FedGMA().aggregate_train(1, [train_reply(1, moved(rng, x), 10)])


def test_fedgma_adam_with_every_coordinate_kept_is_fedadam_and_keeps_its_state():
    """Two rounds: the masked pseudo-gradient equals FedAdam's when the mask is all ones, and the
    cross-round state (FedAdam's moments) is carried the same way."""
    rng = np.random.default_rng(7)
    x = model(rng)
    ours, theirs = FedGMAAdam(mask_tau=0.0, eta=0.1), FedAdam(eta=0.1)
    for _ in range(2):
        replies = [train_reply(i, moved(rng, x), n) for i, n in ((1, 10), (2, 30), (3, 20))]
        mine, _ = aggregate(ours, x, replies)
        reference, _ = aggregate(theirs, x, replies)
        for name in x:
            np.testing.assert_allclose(mine[name], reference[name], rtol=1e-5, atol=1e-6)
        for name in x:
            np.testing.assert_allclose(ours.m_t[name], theirs.m_t[name], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(ours.v_t[name], theirs.v_t[name], rtol=1e-5, atol=1e-9)
        x = {k: v.astype(x[k].dtype) for k, v in mine.items()}
