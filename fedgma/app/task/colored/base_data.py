"""Grayscale base images (MNIST or Fashion-MNIST) through torchvision's datasets.

Where the files come from, in order: ``<data-dir>/<MNIST|FashionMNIST>/raw``
(torchvision's layout); for Fashion-MNIST, the gzipped IDX files of Debian's
``dataset-fashion-mnist`` package, unpacked into that layout once; torchvision's
download when ``download`` is true. Anything else is a :class:`DataUnavailable`
error that says how to get the data.
"""

from __future__ import annotations

import functools
import gzip
import shutil
from pathlib import Path
from typing import IO, Any

import numpy as np

from fedgma.loop.atomic import atomic_write

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Debian recompressed the files (their gzip checksums differ from torchvision's), so
# the unpacked IDX files are checked by size instead: 28x28 images, 60000 + 10000.
_IDX_SIZES = {
    "train-images-idx3-ubyte": 16 + 60000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}
# torchvision's dataset class of each data set. torchvision is imported only when
# the base images are read (about 2 s of CPU): a ClientApp process, started anew for
# every message in deployment, reads its partition from the cache and never needs it.
_CLASS_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def _dataset_class(dataset: str) -> Any:
    from torchvision import datasets

    return getattr(datasets, _CLASS_NAMES[dataset])


class DataUnavailable(FileNotFoundError):
    """The base data set is not on this machine and cannot be fetched."""


def _raw_folder(dataset: str, root: Path) -> Path:
    return root / _CLASS_NAMES[dataset] / "raw"


def _has_raw_files(dataset: str, root: Path) -> bool:
    raw = _raw_folder(dataset, root)
    return all((raw / name.removesuffix(".gz")).is_file() for name, _ in _dataset_class(dataset).resources)


def _write(data: bytes, handle: IO[bytes]) -> None:
    handle.write(data)


def _unpack_debian_files(root: Path, source: Path | None = None) -> bool:
    """Unpack Debian's Fashion-MNIST into torchvision's layout; False if absent."""
    source = source or DEBIAN_FASHION_MNIST
    cls = _dataset_class("fashion-mnist")
    if not all((source / name).is_file() for name, _ in cls.resources):
        return False
    raw = _raw_folder("fashion-mnist", root)
    raw.mkdir(parents=True, exist_ok=True)
    for name, _ in cls.resources:
        unpacked = gzip.decompress((source / name).read_bytes())
        target = name.removesuffix(".gz")
        if len(unpacked) != _IDX_SIZES[target]:
            raise DataUnavailable(
                f"{source / name} unpacks to {len(unpacked)} bytes, expected {_IDX_SIZES[target]}"
            )
        # Concurrent ClientApp processes may unpack at once.
        atomic_write(raw / target, functools.partial(_write, unpacked))
    return True


def ensure_base_data(dataset: str, root: Path, download: bool) -> None:
    """Make the base data set's raw files available under ``root``.

    Raises
    ------
    DataUnavailable
        With instructions, when the files are absent and cannot be obtained.
    """
    if dataset not in _CLASS_NAMES:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(_CLASS_NAMES)}")
    if _has_raw_files(dataset, root):
        return
    if dataset == "fashion-mnist" and _unpack_debian_files(root):
        return
    hint = (
        f"put its IDX files in {_raw_folder(dataset, root)}, or allow downloads on a machine with "
        "internet access (FEDGMA_DOWNLOAD=true, or download=true in the node config)"
    )
    if dataset == "fashion-mnist":
        hint = f"install Debian's package (apt-get install dataset-fashion-mnist), or {hint}"
    if not download:
        raise DataUnavailable(f"{dataset} not found under {root}: {hint}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        _dataset_class(dataset)(root=str(root), train=True, download=True)
    except Exception as err:  # torchvision raises RuntimeError / URLError offline
        shutil.rmtree(_raw_folder(dataset, root), ignore_errors=True)
        raise DataUnavailable(f"{dataset} could not be downloaded ({err}); {hint}") from err


def load_base_images(
    dataset: str, root: Path, train: bool, download: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)``: uint8 ``[N, 28, 28]`` and int64 ``[N]``."""
    ensure_base_data(dataset, root, download)
    data = _dataset_class(dataset)(root=str(root), train=train, download=False)
    return data.data.numpy(), data.targets.numpy().astype(np.int64)
