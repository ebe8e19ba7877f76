"""Data: shapes, the fixed validation split, subsets, normalisation, the idx reader, errors."""

from __future__ import annotations

import dataclasses
import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image_folder
from omegaconf import DictConfig

from lotto.config import load_config
from lotto.data import Data, ImageStream, eval_batches, load_data
from lotto.errors import LottoError
from lotto.models import build_model
from lotto.train import train

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
    from sklearn.linear_model import LogisticRegression

    # 8x8: 64 inputs, so that 1,080 examples pin the linear teacher down
    d = load_data(data_cfg("name=synthetic", "image_size=8"))
    assert len(set(d.train_y.tolist())) >= 5  # not one constant label

    def flat(x: torch.Tensor) -> np.ndarray:
        return x.reshape(len(x), -1).numpy()

    student = LogisticRegression(max_iter=200).fit(flat(d.train_x), d.train_y.numpy())
    # held-out accuracy far above chance (10%; random labels give ~0.1, the teacher ~0.83)
    assert student.score(flat(d.test_x), d.test_y.numpy()) > 0.6


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


@pytest.mark.parametrize("command", ["lottery", "rethink", "build-v3"])
def test_every_command_defaults_to_a_validation_size_that_fits(command: str) -> None:
    """null = 10% of a set that is neither MNIST-like nor CIFAR (digits: 1,437 training)."""
    cfg = load_config(command, overrides=["data.name=digits"]).data
    assert cfg.val_size is None
    d = load_data(cfg)
    assert len(d.val_y) == 1437 // 10 and len(d.train_y) == 1437 - 1437 // 10


# ImageFolder: native size and channels unless asked -------------------------------------------


def test_imagefolder_keeps_native_size_and_grayscale(image_folder: Path) -> None:
    d = load_data(data_cfg("name=imagefolder", f"root={image_folder}"))
    assert d.train_x.shape[1:] == (1, 28, 28) and d.in_channels == 1 and d.image_size == 28
    assert len(d.train_y) + len(d.val_y) == 36 and len(d.test_y) == 12 and d.num_classes == 3
    assert isinstance(d.train_x, torch.Tensor)  # small: in memory


def test_imagefolder_colour_and_mixed_folders_have_three_channels(tmp_path: Path) -> None:
    rgb = write_image_folder(tmp_path / "rgb", size=(16, 16), mode="RGB")
    assert load_data(data_cfg("name=imagefolder", f"root={rgb}")).train_x.shape[1:] == (3, 16, 16)
    mixed = write_image_folder(tmp_path / "mixed", size=(16, 16), mode="L")
    write_image_folder(
        tmp_path / "mixed", size=(16, 16), mode="RGB", per_class=(1, 0), splits=("train",)
    )  # overwrites one grayscale image per class
    d = load_data(data_cfg("name=imagefolder", f"root={mixed}"))
    assert d.in_channels == 3


def test_imagefolder_channels_and_size_when_asked(image_folder: Path) -> None:
    d = load_data(
        data_cfg("name=imagefolder", f"root={image_folder}", "channels=3", "image_size=12")
    )
    assert d.train_x.shape[1:] == (3, 12, 12)
    # a grayscale image read as RGB: three equal channels (and so equal statistics)
    assert torch.equal(d.train_x[:, 0], d.train_x[:, 1])
    assert torch.equal(d.train_x[:, 0], d.train_x[:, 2])
    gray = load_data(
        data_cfg("name=imagefolder", f"root={image_folder}", "channels=1", "image_size=12")
    )
    assert gray.train_x.shape[1:] == (1, 12, 12)
    with pytest.raises(LottoError, match="data.channels"):
        load_data(data_cfg("name=imagefolder", f"root={image_folder}", "channels=2"))
    with pytest.raises(LottoError, match="data.channels"):
        load_data(data_cfg("name=imagefolder", f"root={image_folder}", "channels=two"))


def test_imagefolder_of_mixed_sizes_falls_back_to_64(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "a", size=(20, 20))
    write_image_folder(tmp_path / "a", size=(24, 30), per_class=(1, 1))  # overwrite a few
    assert load_data(data_cfg("name=imagefolder", f"root={root}")).train_x.shape[1:] == (1, 64, 64)
    same = write_image_folder(tmp_path / "b", size=(24, 30))  # one non-square size: 24 crop
    assert load_data(data_cfg("name=imagefolder", f"root={same}")).train_x.shape[1:] == (1, 24, 24)


def test_imagefolder_with_its_own_validation_split(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "v", splits=("train", "test", "val"))
    d = load_data(data_cfg("name=imagefolder", f"root={root}"))
    assert len(d.train_y) == 36 and len(d.val_y) == 12 and len(d.test_y) == 12


# Streaming: the same batches and numbers as in memory -----------------------------------------


def streamed_and_in_memory(*overrides: str, workers: int = 2) -> tuple[Data, Data]:
    memory = load_data(data_cfg(*overrides, "stream=false"))
    streamed = load_data(data_cfg(*overrides, "stream=true", f"workers={workers}"))
    assert isinstance(streamed.train_x, ImageStream) and streamed.streamed
    assert isinstance(memory.train_x, torch.Tensor) and not memory.streamed
    return memory, streamed


def same_batches(a: list[tuple[torch.Tensor, torch.Tensor]], b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b)
    )


def test_streamed_imagefolder_gives_the_same_batches_and_training(image_folder: Path) -> None:
    memory, streamed = streamed_and_in_memory("name=imagefolder", f"root={image_folder}")
    assert streamed.train_x.shape == memory.train_x.shape and len(streamed.train_x) == 33
    assert (streamed.in_channels, streamed.image_size) == (1, 28)
    order = torch.randperm(33, generator=torch.Generator().manual_seed(5))
    batches = list(memory.batches(order, 8))
    assert len(batches) == 4 and same_batches(batches, list(streamed.batches(order, 8)))
    assert same_batches(list(memory.batches(order, 8, first=1, count=2)), batches[1:3])
    assert same_batches(list(streamed.batches(order, 8, first=1, count=2)), batches[1:3])
    for split in ("val", "test"):
        a = list(eval_batches(getattr(memory, f"{split}_x"), getattr(memory, f"{split}_y"), 5))
        b = list(eval_batches(getattr(streamed, f"{split}_x"), getattr(streamed, f"{split}_y"), 5))
        assert same_batches(a, b)


def test_streamed_imagefolder_trains_to_the_same_numbers(image_folder: Path) -> None:
    # worker processes change nothing but speed: none here, to keep the test quick
    memory, streamed = streamed_and_in_memory("name=imagefolder", f"root={image_folder}", workers=0)
    cfg = load_config(
        "lottery", overrides=["train.iterations=8it", "train.eval_every=4it", "train.batch_size=8"]
    ).train

    def run(data: Data) -> tuple[list[dict], dict]:
        torch.manual_seed(0)
        model = build_model("conv2", 1, 3, 28)
        result = train(model, data, cfg, seed=3, device=torch.device("cpu"))
        # NaN != NaN (no training loss at iteration 0): compare the text
        rows = [{k: repr(v) for k, v in r.items() if k != "seconds"} for r in result.history]
        return rows, model.state_dict()

    # with augmentation: the trainer draws it the same way for both paths
    (rows_m, state_m), (rows_s, state_s) = (
        run(dataclasses.replace(d, augment=True)) for d in (memory, streamed)
    )
    assert rows_m == rows_s and len(rows_m) == 3
    assert all(torch.equal(state_m[k], state_s[k]) for k in state_m)


def test_streamed_array_set_with_resize_matches_memory() -> None:
    memory, streamed = streamed_and_in_memory("name=digits", "image_size=12")
    order = torch.randperm(len(memory.train_y), generator=torch.Generator().manual_seed(1))
    assert same_batches(list(memory.batches(order, 300)), list(streamed.batches(order, 300)))


def test_stream_is_chosen_above_the_threshold(image_folder: Path) -> None:
    root = f"root={image_folder}"
    # 48 images of 1x28x28 float32: 0.14 MB
    assert not load_data(data_cfg("name=imagefolder", root)).streamed
    assert load_data(data_cfg("name=imagefolder", root, "stream_threshold_mb=0.1")).streamed
    assert not load_data(data_cfg("name=imagefolder", root, "stream_threshold_mb=0.2")).streamed


@pytest.mark.parametrize("override", ["image_size=0", "workers=-1", "stream_threshold_mb=-1"])
def test_data_ranges_name_the_key(override: str) -> None:
    with pytest.raises(LottoError, match=f"config key data.{override.split('=')[0]}"):
        load_data(data_cfg("name=digits", override))
