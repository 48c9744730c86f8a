"""Fuzzing aggregate_train: malformed replies mixed with good ones never reach the model.

Seeded random generation (reproducible) of 1,138 malformed replies (per variant) of every kind, in
batches with good replies; each batch's result must equal FedGMA on the good replies alone.
"""

import numpy as np
import pytest
from flower_messages import configure, raw_reply, train_reply
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedgma.strategy import FedGMA

SHAPES = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "fc.weight": (2, 16), "steps": ()}


def global_model(rng):
    arrays = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items() if k != "steps"}
    arrays["steps"] = np.array(7, dtype=np.int64)  # a non-float array, as BatchNorm has
    return arrays


def good_arrays(rng, x):
    out = {k: (v - 0.05 * rng.normal(size=v.shape)).astype(v.dtype) for k, v in x.items() if k != "steps"}
    out["steps"] = np.array(int(rng.integers(5, 10)), dtype=np.int64)
    return out


def record(arrays):
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def malformed(rng, x, node):
    """One malformed reply of a random kind; returns (kind, message)."""
    kind = str(rng.choice(KINDS))
    y = good_arrays(rng, x)
    name = str(rng.choice([k for k in SHAPES if k != "steps"]))
    n = int(rng.integers(1, 500))
    if kind == "nan":
        y[name].flat[int(rng.integers(y[name].size))] = np.nan
    elif kind == "inf":
        y[name].flat[int(rng.integers(y[name].size))] = rng.choice([np.inf, -np.inf])
    elif kind == "wrong-shape":
        y[name] = rng.normal(size=y[name].size + int(rng.integers(1, 4))).astype(np.float32)
    elif kind == "transposed":
        y["fc.weight"] = y["fc.weight"].T.copy()
    elif kind == "wrong-dtype":
        # Not castable to the model's dtypes (a wider float, as FedAvg takes, is cast: test_contract).
        if rng.random() < 0.5:
            y[name] = y[name].astype(np.complex64)
        else:
            y["steps"] = y["steps"].astype(np.float64)
    elif kind == "missing-array":
        del y[name]
    elif kind == "extra-array":
        y["extra"] = np.zeros(3, np.float32)
    elif kind == "renamed-array":
        y[name + "_x"] = y.pop(name)
    if kind == "zero-examples":
        return kind, train_reply(node, y, 0)
    if kind == "negative-examples":
        return kind, train_reply(node, y, -int(rng.integers(1, 1000)))
    if kind == "infinite-examples":
        return kind, train_reply(node, y, float("inf"))
    if kind == "nan-examples":
        return kind, train_reply(node, y, float("nan"))
    if kind == "missing-examples":
        return kind, raw_reply(node, RecordDict({"arrays": record(y), "metrics": MetricRecord({"loss": 1.0})}))
    if kind == "empty":
        return kind, raw_reply(node, RecordDict())
    if kind == "no-arrays":
        return kind, raw_reply(node, RecordDict({"metrics": MetricRecord({"num-examples": n})}))
    if kind == "two-array-records":
        return kind, raw_reply(node, RecordDict({"a": record(y), "b": record(y),
                                                 "metrics": MetricRecord({"num-examples": n})}))
    if kind == "config-instead-of-metrics":
        return kind, raw_reply(node, RecordDict({"arrays": record(y), "c": ConfigRecord({"num-examples": n})}))
    return kind, train_reply(node, y, n)


KINDS = ["nan", "inf", "wrong-shape", "transposed", "wrong-dtype", "missing-array", "extra-array",
         "renamed-array", "zero-examples", "negative-examples", "infinite-examples",
         "nan-examples", "missing-examples", "empty", "no-arrays", "two-array-records",
         "config-instead-of-metrics"]


@pytest.mark.parametrize("variant", ["ws", "gma"])
def test_malformed_replies_never_reach_the_global_model(variant):
    rng = np.random.default_rng(20261124)
    tried, kinds_seen, corrupted = 0, set(), 0
    for _ in range(110):
        x = global_model(rng)
        good, bad = [], []
        for node in range(1, int(rng.integers(2, 6)) + 1):
            good.append(train_reply(node, good_arrays(rng, x), int(rng.integers(1, 500))))
        for node in range(100, 100 + int(rng.integers(8, 14))):
            kind, message = malformed(rng, x, node)
            bad.append(message)
            kinds_seen.add(kind)
        mixed = good + bad
        order = rng.permutation(len(mixed))
        mixed = [mixed[i] for i in order]

        # The default arguments: no bounds (a claim above a bound is clipped, not malformed: test_strategy).
        fuzzed = FedGMA(variant=variant)
        configure(fuzzed, x)
        result, metrics = fuzzed.aggregate_train(1, mixed)
        clean = FedGMA(variant=variant)
        configure(clean, x)
        expected, _ = clean.aggregate_train(1, good)

        tried += len(bad)
        assert metrics["replies-used"] == len(good) and metrics["replies-dropped"] == len(bad)
        for name in x:
            value = result[name].numpy()
            assert value.dtype == x[name].dtype and value.shape == x[name].shape
            if not np.isfinite(value).all():
                corrupted += 1
            # The order of the good replies changed (float sums): equal to rounding.
            np.testing.assert_allclose(value, expected[name].numpy(), rtol=1e-5, atol=1e-6)
    print(f"{variant}: {tried} malformed replies of {len(kinds_seen)} kinds in 110 batches, {corrupted} corrupted")
    assert corrupted == 0
    assert tried >= 1000, tried
    assert kinds_seen == set(KINDS)
