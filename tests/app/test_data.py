"""Partitions and the colored tasks, checked against the base grayscale images."""

import numpy as np
import pytest
from run_settings import settings

from fedgma.app.config import DataSource
from fedgma.app.settings import parse_run_config
from fedgma.app.task.colored import base_data
from fedgma.app.task.colored.base_data import DataUnavailable, load_base_images
from fedgma.app.task.colored.coloring import OOD_COLORS, TRAIN_BACKGROUND, TRAIN_FOREGROUND
from fedgma.app.task.colored.data import load_client_partition, load_test_set
from fedgma.app.task.partition import partition_indices


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def base_train(data_dir):
    return load_base_images("fashion-mnist", data_dir, train=True, download=False)


def config_for(data_dir, **overrides):
    return parse_run_config(settings(**overrides)).task


def offline(data_dir):
    return DataSource(data_dir, download=False)


def test_base_data_comes_from_debians_files(base_train):
    images, labels = base_train
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [6000] * 10


@pytest.mark.parametrize("partitioning", ["iid", "non-iid", "dirichlet"])
@pytest.mark.parametrize("num_partitions", [2, 7, 10])
def test_partitions_are_disjoint_and_complete(base_train, partitioning, num_partitions):
    labels = base_train[1][:12000]
    parts = partition_indices(labels, num_partitions, partitioning, alpha=0.5, seed=1)
    assert len(parts) == num_partitions
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)), "a row is in two partitions"
    if partitioning == "non-iid" and num_partitions < 9:
        # Client i holds classes i and i+1: classes beyond num_partitions are unused.
        assert set(np.unique(labels[joined])) == set(range(num_partitions + 1))
        assert np.isin(labels, range(num_partitions + 1)).sum() == len(joined)
    else:
        assert np.array_equal(np.sort(joined), np.arange(len(labels)))


@pytest.mark.parametrize("num_partitions", [5, 10, 20])
def test_non_iid_clients_hold_exactly_two_classes_in_about_equal_numbers(base_train, num_partitions):
    labels = base_train[1]
    parts = partition_indices(labels, num_partitions, "non-iid", alpha=0.5, seed=0)
    for part in parts:
        assert len(np.unique(labels[part])) == 2
    sizes = [len(p) for p in parts]
    if num_partitions % 5 == 0 and num_partitions >= 10:
        # Every class is used equally often, so every client gets the same share.
        assert max(sizes) <= 1.05 * min(sizes)


def test_iid_clients_see_every_class(base_train):
    parts = partition_indices(base_train[1], 10, "iid", alpha=0.5, seed=0)
    for part in parts:
        assert len(np.unique(base_train[1][part])) == 10


def test_client_partitions_cover_the_training_subset(data_dir):
    config = config_for(data_dir, train_images=3000, partitioning="dirichlet")
    rows = [load_client_partition(config, i, 4, offline(data_dir)).rows for i in range(4)]
    joined = np.concatenate(rows)
    assert len(joined) == len(np.unique(joined)) == 3000


def is_green(colored):
    """The binary task draws on black: green when only the green channel is lit."""
    red = colored[:, 0].reshape(len(colored), -1).max(axis=1)
    green = colored[:, 1].reshape(len(colored), -1).max(axis=1)
    assert np.all((red == 0) != (green == 0)), "each image must be pure red or pure green"
    return (green > 0).astype(np.int64)


def flip_rate(dataset, base_labels):
    expected_labels = (base_labels[dataset.rows] >= 5).astype(np.int64)
    assert np.array_equal(dataset.labels, expected_labels)
    return np.mean(is_green(dataset.images) != expected_labels)


def binomial_bound(p, n):
    return 4 * np.sqrt(p * (1 - p) / n) + 1e-9


def test_binary_training_colors_follow_the_label_with_client_flip_rates(data_dir, base_train):
    config = config_for(data_dir, train_images=20000, partitioning="iid")
    for client, expected in [(0, 0.1), (4, 0.2)]:
        data = load_client_partition(config, client, 5, offline(data_dir))
        assert abs(flip_rate(data, base_train[1]) - expected) < binomial_bound(expected, len(data))


def test_binary_test_sets_flip_as_configured(data_dir):
    config = config_for(data_dir, test_images=0)
    test_labels = load_base_images("fashion-mnist", data_dir, train=False, download=False)[1]
    source = offline(data_dir)
    in_dist, ood = load_test_set(config, source, ood=False), load_test_set(config, source, ood=True)
    assert len(ood) == 10000
    assert abs(flip_rate(in_dist, test_labels) - 0.15) < binomial_bound(0.15, 10000)
    assert abs(flip_rate(ood, test_labels) - 0.9) < binomial_bound(0.9, 10000)


def test_colored_pixels_are_the_grayscale_image_painted(data_dir, base_train):
    config = config_for(data_dir, train_images=2000, partitioning="iid")
    data = load_client_partition(config, 1, 2, offline(data_dir))
    gray = base_train[0][data.rows].astype(np.float64) / 255
    green = is_green(data.images)
    expected_green = np.rint(255 * gray * green[:, None, None])
    assert np.array_equal(data.images[:, 1], expected_green.astype(np.uint8))


def nearest(colors, palette):
    """Index of the nearest palette color for each row of ``colors`` (RGB in [0, 1])."""
    return np.argmin(((colors[:, None, :] - palette[None, :, :]) ** 2).sum(-1), axis=1)


def recovered_colors(dataset, base_images):
    """Background from a pixel of gray 0, foreground from the brightest pixel."""
    gray = base_images[dataset.rows].reshape(len(dataset), -1).astype(np.float64) / 255
    pixels = dataset.images.reshape(len(dataset), 3, -1).astype(np.float64) / 255
    idx = np.arange(len(dataset))
    dark, bright = gray.argmin(axis=1), gray.argmax(axis=1)
    assert np.all(gray[idx, dark] == 0) and np.all(gray[idx, bright] > 0.5)
    background = pixels[idx, :, dark]
    v = gray[idx, bright][:, None]
    foreground = (pixels[idx, :, bright] - (1 - v) * background) / v
    return foreground, background


def test_ten_class_training_colors_belong_to_the_class(data_dir, base_train):
    config = config_for(data_dir, task="ten-class", train_images=3000, partitioning="iid")
    data = load_client_partition(config, 0, 1, offline(data_dir))
    assert np.array_equal(data.labels, base_train[1][data.rows])
    fg, bg = recovered_colors(data, base_train[0])
    fg_id = nearest(fg, TRAIN_FOREGROUND.reshape(20, 3))
    bg_id = nearest(bg, TRAIN_BACKGROUND.reshape(20, 3))
    assert np.array_equal(fg_id // 2, data.labels)
    assert np.array_equal(bg_id // 2, data.labels)
    for c in range(10):  # both colors of each pair are used
        assert set(fg_id[data.labels == c] % 2) == {0, 1}


def test_ten_class_ood_colors_are_random_and_unseen(data_dir):
    config = config_for(data_dir, task="ten-class", test_images=5000)
    test_images = load_base_images("fashion-mnist", data_dir, train=False, download=False)[0]
    ood = load_test_set(config, offline(data_dir), ood=True)
    fg, bg = recovered_colors(ood, test_images)
    train_palette = np.concatenate([TRAIN_FOREGROUND.reshape(20, 3), TRAIN_BACKGROUND.reshape(20, 3)])
    palette = np.concatenate([train_palette, OOD_COLORS])
    fg_id, bg_id = nearest(fg, palette), nearest(bg, palette)
    assert fg_id.min() >= 40 and bg_id.min() >= 40, "OOD images reuse a training color"
    assert np.all(fg_id != bg_id)
    for c in range(10):  # colors independent of the class: every OOD color shows up
        assert len(np.unique(fg_id[ood.labels == c])) == 10


def test_partition_cache_returns_identical_data(data_dir):
    config = config_for(data_dir, train_images=2000)
    first = load_client_partition(config, 0, 3, offline(data_dir))
    second = load_client_partition(config, 0, 3, offline(data_dir))
    for field in ("images", "labels", "rows"):
        assert np.array_equal(getattr(first, field), getattr(second, field))


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(DataUnavailable, match=r"mnist not found.*download=true"):
        load_base_images("mnist", tmp_path, train=True, download=False)
    monkeypatch.setattr(base_data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DataUnavailable, match="apt-get install dataset-fashion-mnist"):
        load_base_images("fashion-mnist", tmp_path / "empty", train=True, download=False)


def test_a_process_splits_the_training_set_once_for_all_its_clients(data_dir, monkeypatch):
    from fedgma.app.task.colored import data as data_module

    calls = []
    real = data_module.partition_indices
    monkeypatch.setattr(data_module, "partition_indices", lambda *a: calls.append(a) or real(*a))
    data_module._training_split.cache_clear()
    config = config_for(data_dir, train_images=3000, partitioning="non-iid", seed=5)
    clients = [load_client_partition(config, i, 6, offline(data_dir)) for i in range(6)]
    assert len(calls) == 1  # not once per client
    labels = load_base_images("fashion-mnist", data_dir, train=True, download=False)[1]
    rows = np.sort(np.random.default_rng(5).choice(60000, size=3000, replace=False))
    expected = real(labels[rows], 6, "non-iid", 0.5, 5)  # the split, computed on its own
    for client, part in zip(clients, expected, strict=True):
        assert np.array_equal(client.rows, rows[part])
