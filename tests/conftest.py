"""Shared fixtures: tiny lottery configs, a fake Fashion-MNIST on disk, quiet progress bars."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from rich.progress import Progress

from lotto.config import load_config

# Tiny models on 2 loaded cores: one intra-op thread is both faster and free of contention.
torch.set_num_threads(1)

TINY = [
    "data.name=digits",
    "train.iterations=30it",
    "train.eval_every=10it",
    "lottery.rounds=2",
    "lottery.controls=[]",
    "device=cpu",
]


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def load_script(monkeypatch: pytest.MonkeyPatch):
    """`load_script("finetune_proxy")`: scripts/<name>.py imported as a module; torch's thread
    count, which the fidelity scripts set to 1, is restored afterwards."""
    import importlib.util

    folder = Path(__file__).resolve().parent.parent / "scripts"
    monkeypatch.syspath_prepend(str(folder))
    threads = torch.get_num_threads()

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    yield load
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_lottery_args(runs_dir: Path) -> list[str]:
    """key=value overrides for a lottery run that takes well under a second."""
    return [*TINY, f"run.runs_dir={runs_dir}"]


@pytest.fixture
def lottery_cfg(tiny_lottery_args: list[str]) -> Callable[..., DictConfig]:
    """`lottery_cfg("lottery.rounds=3", ...)`: the tiny config with more overrides on top."""

    def make(*extra: str) -> DictConfig:
        return load_config("lottery", overrides=[*tiny_lottery_args, *extra])

    return make


@pytest.fixture
def quiet() -> Progress:
    return Progress(disable=True)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` (uint8) as a gzipped IDX file, the MNIST format."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


FAKE_TRAIN, FAKE_TEST = 200, 50  # test_data.py relies on these sizes


@pytest.fixture
def fake_fashion_mnist(tmp_path: Path) -> Path:
    """A folder of Fashion-MNIST-format idx.gz files (200 train, 50 test, 28x28, 10 classes).

    Images are noise plus a class-dependent bright band, so that they are learnable.
    """
    root = tmp_path / "fashion"
    root.mkdir()
    rng = np.random.default_rng(123)
    for prefix, n in (("train", FAKE_TRAIN), ("t10k", FAKE_TEST)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 100, size=(n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c : 2 * c + 4] += 150
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images.astype(np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


# The documented per-round columns of the lottery metrics table (README).
METRICS_COLUMNS = [
    "round",
    "variant",
    "seed",
    "density",
    "weights_remaining_pct",
    "iteration",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "test_accuracy",
    "early_stop_iteration",
    "early_stop_val_loss",
    "early_stop_test_accuracy",
    "seconds",
]


def write_image_folder(
    root: Path,
    size: tuple[int, int] = (28, 28),
    mode: str = "L",
    per_class: tuple[int, int] = (12, 4),
    splits: tuple[str, ...] = ("train", "test"),
) -> Path:
    """An ImageFolder of PNGs: `root/<split>/<class>/*.png`, 3 classes, each a bright band at a
    class-dependent row on noise (learnable), `per_class` (train, other splits) images each."""
    from PIL import Image

    rng = np.random.default_rng(7)
    w, h = size
    for split in splits:
        count = per_class[0] if split == "train" else per_class[1]
        for c in range(3):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 120, size=(h, w, 3), dtype=np.uint8)
                band = c * h // 3
                pixels[band : band + h // 4] += 120
                img = Image.fromarray(pixels, "RGB").convert(mode)
                img.save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """28x28 grayscale PNGs: 36 train and 12 test images in 3 classes."""
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def space_file(tmp_path: Path) -> Path:
    """The tiny search space (tests/search_space.py) as a YAML file."""
    from search_space import TINY_SPACE

    path = tmp_path / "space.yaml"
    path.write_text(TINY_SPACE)
    return path
