"""FedGMA.aggregate_train on constructed replies, with no server."""

import numpy as np
import pytest
from flower_messages import configure, error_reply, raw_reply, train_reply
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedgma.strategy import FedGMA, FedGMAAdam
from fedgma.strategy.masking import resolve_tau
from fedgma.strategy.validation import ReplyBounds, check_replies


def model_arrays(rng):
    return {
        "conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.normal(size=4).astype(np.float32),
        "fc.weight": rng.normal(size=(2, 16)).astype(np.float32),
    }


def client_replies(rng, global_arrays, k=5):
    replies = []
    for node in range(1, k + 1):
        arrays = {n: v - 0.05 * rng.normal(size=v.shape).astype(np.float32) for n, v in global_arrays.items()}
        replies.append(train_reply(node, arrays, int(rng.integers(10, 200)), train_loss=float(rng.random())))
    return replies


def as_numpy(record: ArrayRecord):
    return {k: v.numpy() for k, v in record.items()}


def run_both(fedgma, rng):
    global_arrays = model_arrays(rng)
    replies = client_replies(rng, global_arrays)
    configure(fedgma, global_arrays)
    ours, ours_metrics = fedgma.aggregate_train(1, replies)
    theirs, theirs_metrics = FedAvg().aggregate_train(1, replies)
    return ours, ours_metrics, theirs, theirs_metrics


@pytest.mark.parametrize(
    "strategy",
    [FedGMA(variant="gma", mask_tau=0.0, server_lr=1.0), FedGMA(variant="ws", server_lr=0.0)],
    ids=["gma-tau0-lr1", "ws-lr0"],
)
def test_degenerate_settings_equal_flowers_fedavg(strategy):
    ours, ours_metrics, theirs, theirs_metrics = run_both(strategy, np.random.default_rng(0))
    ours_np, theirs_np = as_numpy(ours), as_numpy(theirs)
    assert ours_np.keys() == theirs_np.keys()
    for name in ours_np:
        assert ours_np[name].dtype == theirs_np[name].dtype
        np.testing.assert_allclose(ours_np[name], theirs_np[name], rtol=1e-5, atol=1e-6)
    assert ours_metrics["train_loss"] == pytest.approx(theirs_metrics["train_loss"])


def test_masked_step_differs_from_fedavg_and_reports_the_mask():
    ours, metrics, theirs, _ = run_both(FedGMA(variant="ws", mask_tau=0.0, server_lr=1.0), np.random.default_rng(1))
    # tau = 0 keeps every coordinate: x - 2 g_bar, i.e. twice FedAvg's step.
    assert metrics["mask-kept-fraction"] == 1.0 and metrics["mask-mean"] == 1.0
    for name, value in as_numpy(ours).items():
        assert not np.allclose(value, theirs[name].numpy())
    for key in ("mask-kept-fraction", "mask-mean", "agreement-mean", "replies-used", "train_loss"):
        assert key in metrics
    assert metrics["replies-used"] == 5 and metrics["replies-dropped"] == 0


def test_error_replies_are_skipped():
    rng = np.random.default_rng(2)
    global_arrays = model_arrays(rng)
    good = client_replies(rng, global_arrays, k=3)
    strategy = FedGMA(variant="gma")
    configure(strategy, global_arrays)
    with_errors, metrics = strategy.aggregate_train(1, [*good, error_reply(9), error_reply(10)])
    configure(strategy, global_arrays)
    alone, _ = strategy.aggregate_train(1, good)
    for name, value in as_numpy(with_errors).items():
        np.testing.assert_array_equal(value, alone[name].numpy())
    assert metrics["replies-failed"] == 2 and metrics["replies-used"] == 3


def test_malformed_replies_are_dropped_and_never_reach_the_model():
    rng = np.random.default_rng(3)
    global_arrays = model_arrays(rng)
    good = client_replies(rng, global_arrays, k=3)
    nan = {n: v.copy() for n, v in global_arrays.items()}
    nan["fc.weight"][0, 0] = np.nan
    wrong_shape = {**global_arrays, "conv.bias": np.zeros(5, np.float32)}
    wrong_dtype = {**global_arrays, "conv.bias": np.zeros(4, np.complex64)}
    missing = {k: v for k, v in global_arrays.items() if k != "fc.weight"}
    bad = [
        train_reply(11, nan, 10),
        train_reply(12, wrong_shape, 10),
        train_reply(13, wrong_dtype, 10),
        train_reply(14, missing, 10),
        train_reply(15, global_arrays, 0),
        train_reply(16, global_arrays, -5),
        raw_reply(17, RecordDict()),
        raw_reply(18, RecordDict({"metrics": MetricRecord({"num-examples": 3})})),
    ]
    strategy = FedGMA(variant="ws", mask_tau=0.6, server_lr=0.5)
    configure(strategy, global_arrays)
    mixed, metrics = strategy.aggregate_train(1, bad[:4] + good + bad[4:])
    configure(strategy, global_arrays)
    alone, _ = strategy.aggregate_train(1, good)
    for name, value in as_numpy(mixed).items():
        assert np.isfinite(value).all()
        np.testing.assert_array_equal(value, alone[name].numpy())
    assert metrics["replies-dropped"] == len(bad)


def test_no_usable_reply_keeps_the_model():
    rng = np.random.default_rng(4)
    global_arrays = model_arrays(rng)
    strategy = FedGMA()
    configure(strategy, global_arrays)
    assert strategy.aggregate_train(1, [error_reply(1)]) == (None, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "fedsgd"}, "variant"),
        ({"mask_tau": 1.5}, "mask_tau"),
        ({"mask_tau": -0.1}, "mask_tau"),
        ({"server_lr": -1.0}, "server_lr"),
        ({"server_lr": float("nan")}, "server_lr"),
    ],
)
def test_bad_keywords_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FedGMA(**kwargs)


def test_variant_default_thresholds():
    assert FedGMA(variant="ws").mask_tau == 0.8
    assert FedGMA(variant="gma").mask_tau == 0.4
    # One resolution, the app's too: None -> the variant's default; a given value is checked.
    assert (resolve_tau("ws", None), resolve_tau("gma", None), resolve_tau("gma", 1)) == (0.8, 0.4, 1.0)
    with pytest.raises(ValueError, match="variant"):
        resolve_tau("fedsgd", 0.5)
    with pytest.raises(ValueError, match="mask_tau"):
        resolve_tau("ws", True)
    with pytest.raises(TypeError, match=r"FedGMA\(mask_tau=0.8\)"):  # the name FedAdam uses, not FedGMA's
        FedGMA(tau=0.8)
    assert FedGMAAdam(tau=0.01).tau == 0.01  # FedAdam's own tau still reaches FedAdam


def test_bounds_travel_as_one_reply_bounds():
    assert FedGMA().bounds == ReplyBounds()  # None: no bound, as FedAvg
    assert FedGMA(bounds=ReplyBounds(max_update_norm=2.0)).bounds.max_update_norm == 2.0
    with pytest.raises(TypeError, match="ReplyBounds"):
        FedGMA(bounds={"max_weight_ratio": 10})
    with pytest.raises(TypeError):  # the loose keywords are gone
        FedGMA(max_weight_ratio=10)


def test_checked_replies_are_aggregated_as_aggregate_train_would():
    """aggregate_checked (the round loop's hand-off) folds what check_replies kept: the same bits
    as aggregate_train, which checks the replies itself and also counts them."""
    rng = np.random.default_rng(5)
    x = model_arrays(rng)
    replies = client_replies(rng, x)
    standalone = FedGMA(variant="gma")
    configure(standalone, x)
    ours, own_metrics = standalone.aggregate_train(1, replies)
    handed = FedGMA(variant="gma")
    configure(handed, x)
    checked, refused = check_replies(replies, x, handed.weighted_by_key, handed.bounds)
    assert not refused
    theirs, metrics = handed.aggregate_checked(1, checked)
    for name in x:
        np.testing.assert_array_equal(ours[name].numpy(), theirs[name].numpy())
    assert "replies-used" in own_metrics and not any(key.startswith("replies-") for key in metrics)
    assert metrics["mask-mean"] == own_metrics["mask-mean"]
    other = {name: np.zeros((1, *value.shape), value.dtype) for name, value in x.items()}
    wrong, _ = check_replies(client_replies(rng, other), other, "num-examples", ReplyBounds())
    with pytest.raises(ValueError, match="not checked against this round's global weights"):
        handed.aggregate_checked(1, wrong)


def peak_extra_bytes(strategy, global_arrays, replies):
    """Peak memory allocated by aggregate_train beyond what the replies already hold."""
    import tracemalloc

    configure(strategy, global_arrays)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = strategy.aggregate_train(1, replies)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result[0] is not None
    return peak - before


@pytest.mark.parametrize("variant", ["ws", "gma"])
def test_aggregation_memory_does_not_grow_with_the_number_of_clients(variant):
    rng = np.random.default_rng(5)
    p = 250_000
    global_arrays = {"w": rng.normal(size=p).astype(np.float32)}

    def replies(k):
        return [train_reply(i + 1, {"w": global_arrays["w"] - rng.normal(size=p).astype(np.float32)}, 10)
                for i in range(k)]

    few = peak_extra_bytes(FedGMA(variant=variant), global_arrays, replies(4))
    many = peak_extra_bytes(FedGMA(variant=variant), global_arrays, replies(32))
    model_bytes = p * 4
    # A stacked (K x P) aggregation would need 8x more for 32 clients than for 4.
    assert many < 1.1 * few, (few / model_bytes, many / model_bytes)
    assert many < 12 * model_bytes


@pytest.mark.parametrize("variant", ["ws", "gma"])
@pytest.mark.parametrize("claim", [10**15, 99_999_999, 50 * 150],
                         ids=["claims-1e15", "claims-99999999", "claims-50x-median"])
def test_a_client_lying_about_its_example_count_counts_as_the_bound_when_one_is_set(variant, claim):
    """With its default arguments the strategy takes a claim at its word, as FedAvg does; with
    max_weight_ratio = 10 the claim counts as 10 x the round's lower median (honest claims
    151-155: median 153, so 1530): the same bits as a liar who had claimed 1530."""
    rng = np.random.default_rng(7)
    global_arrays = model_arrays(rng)
    moved = [{n: v - 0.01 * rng.normal(size=v.shape).astype(np.float32) for n, v in global_arrays.items()}
             for _ in range(5)]
    target = {n: v + 100.0 for n, v in global_arrays.items()}  # where the liar pulls the model

    def replies(liar_claim):
        honest = [train_reply(node, moved[node - 1], 150 + node) for node in range(1, 6)]
        return [*honest[:2], train_reply(66, target, liar_claim), *honest[2:]]

    def aggregate(strategy, claim_):
        configure(strategy, global_arrays)
        return strategy.aggregate_train(1, replies(claim_))

    taken, metrics = aggregate(FedGMA(variant=variant), claim)
    assert metrics["replies-used"] == 6 and metrics["replies-clipped"] == 0
    if variant == "gma":  # gma at its default threshold keeps FedAvg's step where clients agree
        assert np.abs(as_numpy(taken)["fc.weight"] - global_arrays["fc.weight"]).max() > 10
    clipped, metrics = aggregate(FedGMA(variant=variant, bounds=ReplyBounds(max_weight_ratio=10)), claim)
    assert metrics["replies-used"] == 6 and metrics["replies-clipped"] == 1 and metrics["replies-dropped"] == 0
    honest_claim, _ = aggregate(FedGMA(variant=variant), 1530)
    for name, value in as_numpy(clipped).items():
        np.testing.assert_array_equal(value, honest_claim[name].numpy())


def test_weight_bound_keeps_honest_spread_and_clips_above_it():
    rng = np.random.default_rng(8)
    global_arrays = model_arrays(rng)
    counts = [40, 100, 120, 400]  # 10x the lower median (100) is 1000: none clipped
    replies = [train_reply(i + 1, {n: v - 0.01 for n, v in global_arrays.items()}, c) for i, c in enumerate(counts)]
    strategy = FedGMA(bounds=ReplyBounds(max_weight_ratio=10))
    configure(strategy, global_arrays)
    _, metrics = strategy.aggregate_train(1, replies)
    assert (metrics["replies-used"], metrics["replies-clipped"]) == (4, 0)
    replies.append(train_reply(9, global_arrays, 100 * 1001))
    configure(strategy, global_arrays)
    _, metrics = strategy.aggregate_train(1, replies)
    assert (metrics["replies-used"], metrics["replies-clipped"]) == (5, 1)
    assert replies[-1].content["metrics"]["num-examples"] == 1200  # the lower median of five is 120
    with pytest.raises(ValueError, match="max_weight_ratio"):
        FedGMA(bounds=ReplyBounds(max_weight_ratio=0.5))


def test_the_weight_limit_uses_the_lower_median():

    ratio = ReplyBounds(max_weight_ratio=10)
    assert ratio.weight_limit([500, 10**15])[0] == 5000  # measured against 500, not their mean
    assert ratio.weight_limit([500, 4999, 5001])[0] == 49990  # median 4999
    assert ratio.weight_limit([500, 500, 5001])[0] == 5000
    assert ratio.weight_limit([10**9]) is None and ReplyBounds().weight_limit([1, 10**9]) is None
    both = ReplyBounds(max_num_examples=3000, max_weight_ratio=10)
    assert both.weight_limit([500, 500, 5001]) == (3000, "max_num_examples 3000")
