"""The shortcut cases of the colored tasks: reversed clients, private markers, the plain test
set, ten-class colour-class correlation, the mask's kept share per input channel, and the
default settings' data unchanged."""

import hashlib

import numpy as np
import pytest
from run_settings import settings

from fedgma.app.config import DataSource
from fedgma.app.settings import ConfigError, RunConfig, parse_run_config
from fedgma.app.task import make_task
from fedgma.app.task.colored.base_data import load_base_images
from fedgma.app.task.colored.coloring import (
    TRAIN_BACKGROUND,
    TRAIN_FOREGROUND,
    client_flip_probability,
    marker_positions,
    paint,
    reversed_client,
)
from fedgma.app.task.colored.data import _key, load_client_partition, load_test_set


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return DataSource(tmp_path_factory.mktemp("shortcut-data"), download=False)


def task_settings(**overrides):
    return parse_run_config(settings(**overrides)).task


def bound(p, n):
    """Four binomial standard deviations."""
    return 4 * np.sqrt(p * (1 - p) / n) + 1e-9


def channel_max(images, channel):
    return images[:, channel].reshape(len(images), -1).max(axis=1)


# ---------------------------------------------------------------- which clients are reversed

def reversed_of(share, n):
    return [c for c in range(n) if reversed_client(c, share)]


def test_reversed_clients_are_spread_evenly():
    assert reversed_of(0.0, 10) == []
    assert reversed_of(0.5, 10) == [1, 3, 5, 7, 9]  # half and half, alternating
    assert len(reversed_of(0.3, 10)) == 3 and len(reversed_of(0.3, 50)) == 15  # 70/30, exact despite 0.3's float
    assert len(reversed_of(0.7, 10)) == 7 and len(reversed_of(0.1, 81)) == 8
    gaps = np.diff(reversed_of(0.3, 50))
    assert set(gaps) <= {3, 4}, "spread evenly, not bunched"


# ---------------------------------------------------------------- colour shortcut

def test_a_reversed_client_draws_label_one_red(source):
    config = task_settings(train_images=12000, partitioning="iid", shortcut_reversed_share=0.5)
    for client in (0, 1):  # client 1 of 4 is reversed
        data = load_client_partition(config, client, 4, source)
        flip = client_flip_probability(client, 4, 0.1, 0.2)
        red, green = channel_max(data.images, 0) > 0, channel_max(data.images, 1) > 0
        assert np.all(red != green) and np.all(channel_max(data.images, 2) == 0)  # no blue in colour data
        ones = data.labels == 1
        share_green = green[ones].mean()
        expected = flip if reversed_client(client, 0.5) else 1 - flip
        assert abs(share_green - expected) < bound(expected, ones.sum()), (client, share_green)
        # label 0 the other way round
        assert abs(red[~ones].mean() - expected) < bound(expected, (~ones).sum())


def test_the_id_set_reverses_each_image_with_the_share_and_ood_keeps_its_meaning(source):
    config = task_settings(test_images=6000, shortcut_reversed_share=0.3)
    test_id, ood = load_test_set(config, source, name="id"), load_test_set(config, source, name="ood")
    # green agrees with the label unless flipped (0.15) xor reversed (0.3): 0.15 * 0.3 + 0.85 * 0.7
    agree = 0.15 * 0.3 + 0.85 * 0.7
    assert abs(np.mean((channel_max(test_id.images, 1) > 0) == test_id.labels) - agree) < bound(agree, 6000)
    assert abs(np.mean((channel_max(ood.images, 1) > 0) == ood.labels) - 0.1) < bound(0.1, 6000)


def test_the_plain_set_is_colour_neutral(source):
    config = task_settings(test_images=3000)
    plain = load_test_set(config, source, name="plain")
    gray = load_base_images("fashion-mnist", source.path, train=False, download=False)[0][plain.rows]
    assert np.array_equal(plain.images[:, 0], plain.images[:, 1]) and not plain.images[:, 2].any()
    assert np.array_equal(plain.images[:, 0], np.rint(gray / 2).astype(np.uint8))
    assert np.array_equal(plain.labels, (plain.digits >= 5).astype(np.int64))


def test_the_binary_task_has_three_test_sets_and_ten_class_two(source):
    assert list(make_task(task_settings(test_images=500)).test_sets(source)) == ["id", "ood", "plain"]
    assert list(make_task(task_settings(task="ten-class", test_images=500)).test_sets(source)) == ["id", "ood"]


# ---------------------------------------------------------------- private markers

def marker_owner(images, positions):
    """The client whose marker cell is lit in each image (-1: none); asserts at most one cell
    is lit, fully, and nothing else is blue."""
    blue = images[:, 2]
    owner = np.full(len(images), -1)
    for client, (row, col) in enumerate(positions):
        patch = blue[:, row:row + 3, col:col + 3].reshape(len(images), -1)
        lit = patch.max(axis=1) > 0
        assert np.all(patch[lit] == 255), "a marker is 255 over its whole 3x3 cell"
        assert np.all(owner[lit] == -1), "two markers in one image"
        owner[lit] = client
    assert not blue[:, 27].any() and not blue[:, :, 27].any(), "blue outside the marker cells"
    return owner


def test_marker_positions_are_81_distinct_cells_of_the_seed():
    positions = marker_positions(0)
    assert positions.shape == (81, 2) and len({tuple(p) for p in positions}) == 81
    assert set(positions.ravel()) == set(range(0, 27, 3))
    assert not np.array_equal(positions, marker_positions(1))


def test_each_client_marks_its_own_label_at_its_own_position(source):
    config = task_settings(train_images=12000, partitioning="iid", shortcut="marker", shortcut_reversed_share=0.5)
    positions = marker_positions(config.seed)
    for client in (0, 1, 3):  # 1 and 3 are reversed: they mark label 0
        data = load_client_partition(config, client, 4, source)
        owner = marker_owner(data.images, positions)
        assert set(np.unique(owner)) == {-1, client}, "another client's position is marked"
        assert np.array_equal(owner, data.colors[:, 1])
        flip = client_flip_probability(client, 4, 0.1, 0.2)
        marked_label = 0 if reversed_client(client, 0.5) else 1
        on = data.labels == marked_label
        assert abs((owner[on] >= 0).mean() - (1 - flip)) < bound(1 - flip, on.sum())
        assert abs((owner[~on] >= 0).mean() - flip) < bound(flip, (~on).sum())
        # the digit's colour says nothing of the label
        red, green = channel_max(data.images, 0) > 0, channel_max(data.images, 1) > 0
        assert np.all(red != green)
        for label in (0, 1):
            n = (data.labels == label).sum()
            assert abs(green[data.labels == label].mean() - 0.5) < bound(0.5, n)


def test_marker_test_sets_carry_the_clients_markers_their_way_round_and_plain_none(source):
    config = task_settings(test_images=8000, shortcut="marker", shortcut_reversed_share=0.5, marker_clients=6)
    positions = marker_positions(config.seed)
    for name, flip in (("id", 0.15), ("ood", 0.9)):
        data = load_test_set(config, source, name=name)
        owner = marker_owner(data.images, positions)
        assert set(np.unique(owner)) == {-1, *range(6)}
        # which client's marker an image would carry is hidden where none was drawn; the
        # drawn ones sit on their client's marked label at 1 - flip of the expected rate
        drawn = owner >= 0
        marked = np.where([reversed_client(c, 0.5) for c in owner[drawn]], 0, 1)
        share = np.mean(data.labels[drawn] == marked)  # 1 - flip with balanced labels
        assert abs(share - (1 - flip)) < bound(flip, drawn.sum()) + 0.02, (name, share)
        assert abs(drawn.mean() - 0.5) < 0.03
    plain = load_test_set(config, source, name="plain")
    assert not plain.images[:, 2].any() and np.all(plain.colors[:, 1] == -1)
    green = channel_max(plain.images, 1) > 0
    assert abs(green.mean() - 0.5) < bound(0.5, len(plain))


def test_marker_id_set_draws_all_81_clients_by_default(source):
    config = task_settings(test_images=8000, shortcut="marker")
    owner = load_test_set(config, source, name="id").colors[:, 1]
    assert set(np.unique(owner)) == {-1, *range(81)}


def test_more_than_81_marker_clients_is_a_clear_error(source):
    config = task_settings(shortcut="marker")
    with pytest.raises(ConfigError, match="at most 81 clients"):
        load_client_partition(config, 0, 82, source)
    with pytest.raises(ConfigError, match="'num-partitions' = 82"):
        parse_run_config(settings(shortcut="marker", num_partitions=82))
    parse_run_config(settings(num_partitions=82))  # the colour shortcut has no such bound


# ---------------------------------------------------------------- ten-class correlation

def test_ten_class_correlation_paints_a_share_in_other_classes_colours(source):
    base = load_base_images("fashion-mnist", source.path, train=True, download=False)[0]
    config = task_settings(task="ten-class", train_images=6000, partitioning="iid", color_class_correlation=0.8)
    data = load_client_partition(config, 0, 1, source)
    fg_id, bg_id, painted = data.colors.T
    other = painted != data.labels
    assert abs(other.mean() - 0.2) < bound(0.2, len(data))
    for c in range(10):  # the other class is drawn uniformly among the nine
        assert set(painted[other & (data.labels == c)]) == set(range(10)) - {c}
    expected = paint(base[data.rows], TRAIN_FOREGROUND[painted, fg_id], TRAIN_BACKGROUND[painted, bg_id])
    assert np.array_equal(data.images, expected)
    test_id = load_test_set(config, source, name="id")
    assert abs(np.mean(test_id.colors[:, 2] != test_id.labels) - 0.2) < bound(0.2, len(test_id))
    # OOD is unchanged by the correlation
    ood = load_test_set(config, source, name="ood")
    plain_ood = load_test_set(task_settings(task="ten-class"), source, name="ood")
    assert np.array_equal(ood.images, plain_ood.images)
    # rho = 1 keeps today's two colour-id columns, every image in its own class's colours
    assert load_client_partition(task_settings(task="ten-class", train_images=600), 0, 1, source).colors.shape[1] == 2


# ---------------------------------------------------------------- the mask per input channel

def test_mask_metrics_give_the_kept_share_per_input_channel():
    task = make_task(task_settings())
    mask = np.zeros((16, 3, 5, 5), dtype=np.float32)
    mask[:, 0] = 1.0  # red all kept
    mask[:4, 1] = 1.0 - 1e-7  # green: a quarter kept (within the tolerance)
    mask[:8, 1, 0, 0] = 0.99  # below the tolerance: not kept
    mask[:, 2, :, :2] = 0.5  # blue: a fraction of the mask, not kept
    mask[0, 2, 0, 0] = 1.0  # one blue entry kept
    metrics = task.mask_metrics({"features.0.weight": mask, "features.0.bias": np.ones(16)})
    assert metrics == {"mask-kept-red": 1.0, "mask-kept-green": (4 * 25 - 4) / 400, "mask-kept-blue": 1 / 400}
    assert task.mask_metrics({"features.0.bias": np.ones(16)}) == {}


# ---------------------------------------------------------------- the defaults are today's data

def digest(sets):
    h = hashlib.sha256()
    for s in sets:
        for field in ("images", "labels", "digits", "colors", "rows"):
            h.update(getattr(s, field).tobytes())
    return h.hexdigest()[:16]


# Computed with the code before the shortcut settings existed (commit 05e342d).
DIGESTS = {"binary": "4f88fc44a2202f07", "ten-class": "7b3af45f3e084eae"}
TEST_KEYS = {"binary": "eeb8a506c25f3190", "ten-class": "80832f82dfe0d4d7"}


@pytest.mark.parametrize("task", ["binary", "ten-class"])
def test_default_settings_make_the_same_bytes_and_cache_keys_as_before(tmp_path, task):
    source = DataSource(tmp_path, download=False)  # nothing cached: built afresh
    config = task_settings(task=task, train_images=3000, test_images=1000, partitioning="iid")
    sets = [load_client_partition(config, i, 3, source) for i in range(3)]
    sets += [load_test_set(config, source, ood=False), load_test_set(config, source, ood=True)]
    assert digest(sets) == DIGESTS[task]
    assert _key(task_settings(task=task), split="test", test_images=0, ood=False, flip=0.15) == TEST_KEYS[task]


def test_a_saved_config_without_the_new_keys_reads_as_the_defaults():
    flat = parse_run_config(settings()).flat()
    for key in ("shortcut", "shortcut_reversed_share", "marker_clients", "color_class_correlation"):
        del flat[key]
    task = RunConfig.from_flat(flat).task
    assert (task.shortcut, task.shortcut_reversed_share, task.marker_clients, task.color_class_correlation) == (
        "color", 0.0, 0, 1.0)
