"""Data: shapes, the fixed validation split, subsets, normalisation, the idx reader, errors."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from lotto.config import load_config
from lotto.data import load_data
from lotto.errors import LottoError

FAKE_TRAIN, FAKE_TEST = 200, 50  # the sizes of the `fake_fashion_mnist` fixture


def data_cfg(*overrides: str) -> DictConfig:
    return load_config("lottery", overrides=[f"data.{o}" for o in overrides]).data


def test_digits_shapes_and_splits() -> None:
    d = load_data(data_cfg("name=digits"))
    assert d.train_x.shape[1:] == (1, 8, 8) and d.in_channels == 1 and d.image_size == 8
    assert len(d.test_x) == 360
    assert len(d.val_x) == (1797 - 360) // 10
    assert len(d.train_x) + len(d.val_x) + len(d.test_x) == 1797
    assert d.num_classes == 10 and not d.augment
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert len(d.train_x) == len(d.train_y) and len(d.val_x) == len(d.val_y)
    assert set(d.train_y.tolist()) == set(range(10))


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 12)])
def test_synthetic_shapes(channels: int, size: int) -> None:
    d = load_data(data_cfg("name=synthetic", f"channels={channels}", f"image_size={size}"))
    assert d.train_x.shape[1:] == (channels, size, size)
    assert d.test_x.shape[1:] == (channels, size, size)
    assert len(d.train_x) + len(d.val_x) == 1200 and len(d.test_x) == 300
    assert d.num_classes <= 10


def test_synthetic_is_learnable_by_its_teacher_structure() -> None:
    d = load_data(data_cfg("name=synthetic"))
    assert len(set(d.train_y.tolist())) >= 5  # not one constant label


def test_validation_split_is_fixed_and_ignores_the_training_seed() -> None:
    torch.manual_seed(1)
    np.random.seed(1)
    a = load_data(data_cfg("name=digits"))
    torch.manual_seed(2)
    np.random.seed(2)
    b = load_data(data_cfg("name=digits"))
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.val_y, b.val_y)
    assert torch.equal(a.train_x, b.train_x)
    # validation and training examples are disjoint
    val = {tuple(x.flatten().tolist()) for x in a.val_x}
    assert sum(tuple(x.flatten().tolist()) in val for x in a.train_x[:200]) < 5  # digits repeats


def test_val_size() -> None:
    d = load_data(data_cfg("name=digits", "val_size=100"))
    assert len(d.val_x) == 100 and len(d.train_x) == 1437 - 100
    with pytest.raises(LottoError, match="data.val_size"):
        load_data(data_cfg("name=digits", "val_size=5000"))
    with pytest.raises(LottoError, match="data.val_size"):
        load_data(data_cfg("name=digits", "val_size=0"))


def test_subset_cuts_training_only() -> None:
    full = load_data(data_cfg("name=digits"))
    sub = load_data(data_cfg("name=digits", "subset=50"))
    assert len(sub.train_x) == 50
    assert torch.equal(sub.val_y, full.val_y) and torch.equal(sub.test_y, full.test_y)
    assert torch.equal(sub.train_y, full.train_y[:50])
    with pytest.raises(LottoError, match="data.subset"):
        load_data(data_cfg("name=digits", "subset=0"))


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_normalised_with_training_statistics(name: str) -> None:
    d = load_data(data_cfg(f"name={name}"))
    assert abs(d.train_x.mean().item()) < 1e-4
    assert d.train_x.std().item() == pytest.approx(1.0, abs=1e-3)
    # the other splits use the training statistics, so they are only close
    assert abs(d.test_x.mean().item()) < 0.2


def test_resize() -> None:
    d = load_data(data_cfg("name=digits", "image_size=16"))
    assert d.train_x.shape[1:] == (1, 16, 16) and d.image_size == 16


def test_fake_fashion_mnist_from_root(fake_fashion_mnist: Path) -> None:
    d = load_data(data_cfg("name=fashion-mnist", f"root={fake_fashion_mnist}", "val_size=20"))
    assert d.train_x.shape == (FAKE_TRAIN - 20, 1, 28, 28)
    assert d.val_x.shape == (20, 1, 28, 28)
    assert d.test_x.shape == (FAKE_TEST, 1, 28, 28)
    assert d.num_classes == 10
    assert sorted(d.test_y.tolist()) == sorted((np.arange(FAKE_TEST) % 10).tolist())
    # the labels are read in file order: test label i is i % 10
    assert d.test_y.tolist() == (np.arange(FAKE_TEST) % 10).tolist()
    # the class band is where the label says (brightest rows 2c..2c+3 before normalisation)
    raw = d.test_x[3, 0].mean(dim=1)
    assert int(raw.argmax()) in range(6, 10)


def test_fake_fashion_mnist_default_val_size_too_big(fake_fashion_mnist: Path) -> None:
    with pytest.raises(LottoError, match="data.val_size: 5000"):
        load_data(data_cfg("name=fashion-mnist", f"root={fake_fashion_mnist}"))


def test_fashion_mnist_torchvision_layout_uncompressed(
    fake_fashion_mnist: Path, tmp_path: Path
) -> None:
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in fake_fashion_mnist.iterdir():
        with gzip.open(gz, "rb") as src, open(raw / gz.name.removesuffix(".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    a = load_data(data_cfg("name=fashion-mnist", f"root={tmp_path / 'tv'}", "val_size=20"))
    b = load_data(data_cfg("name=fashion-mnist", f"root={fake_fashion_mnist}", "val_size=20"))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(LottoError) as err:
        load_data(data_cfg("name=fashion-mnist", f"root={tmp_path}"))
    message = str(err.value)
    assert str(tmp_path) in message
    assert "dataset-fashion-mnist" in message and "data.download" in message


def test_corrupt_fashion_mnist(fake_fashion_mnist: Path) -> None:
    path = fake_fashion_mnist / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(LottoError, match="unreadable"):
        load_data(data_cfg("name=fashion-mnist", f"root={fake_fashion_mnist}", "val_size=20"))


def test_unknown_dataset() -> None:
    with pytest.raises(LottoError, match="unknown dataset 'nope'.*digits"):
        load_data(data_cfg("name=nope"))


def test_imagefolder_needs_root() -> None:
    with pytest.raises(LottoError, match="data.root"):
        load_data(data_cfg("name=imagefolder"))
