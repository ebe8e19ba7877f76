"""Datasets as in-memory tensors on the training device, so a batch is one index operation.

Every loader returns the same `Data`: normalised float32 NCHW images and int64 labels for the
train, validation (held out from the training set, fixed split) and test splits.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from lotto.errors import LottoError

FASHION_MNIST_SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "digits", "synthetic")
# Validation examples held out of the training set when `data.val_size` is null.
DEFAULT_VAL_SIZE = {"fashion-mnist": 5000, "mnist": 5000, "cifar10": 5000, "cifar100": 5000}
SPLIT_SEED = 0  # the validation split does not move with the training seed


@dataclass
class Data:
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    augment: bool

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw"):
        for name in (f"{stem}.gz", stem):
            if (folder / name).exists():
                return folder / name
    return None


def _fashion_mnist(cfg: DictConfig) -> tuple[np.ndarray, ...]:
    roots = [Path(cfg.root).expanduser()] if cfg.root else [FASHION_MNIST_SYSTEM_ROOT]
    stems = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    for root in roots:
        paths = [_find_idx(root, s) for s in stems]
        if all(paths):
            try:
                arrays = [_read_idx(p) for p in paths]
            except (OSError, ValueError, EOFError) as e:
                raise LottoError(f"Fashion-MNIST files under {root} are unreadable: {e}") from None
            return arrays[0][:, None], arrays[1], arrays[2][:, None], arrays[3]
    if cfg.download:
        return _torchvision_set("FashionMNIST", cfg)
    raise LottoError(
        f"Fashion-MNIST not found under {roots[0]}; install it with "
        "'apt-get install dataset-fashion-mnist' (or 'make data'), point data.root at the idx "
        "files, or set data.download=true"
    )


def _torchvision_set(cls_name: str, cfg: DictConfig) -> tuple[np.ndarray, ...]:
    import torchvision.datasets as tvd

    root = Path(cfg.root or "~/.cache/lotto/data").expanduser()
    cls = getattr(tvd, cls_name)
    try:
        train, test = (cls(str(root), train=t, download=bool(cfg.download)) for t in (True, False))
    except RuntimeError as e:
        hint = "" if cfg.download else "; set data.download=true or point data.root at it"
        raise LottoError(
            f"{cls_name} not found under {root} ({str(e).splitlines()[0]}){hint}"
        ) from None

    def arrays(ds: object) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(ds.data)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # MNIST: NHW, CIFAR: NHWC
        return x, np.asarray(ds.targets)

    return (*arrays(train), *arrays(test))


def _imagefolder(cfg: DictConfig) -> tuple[np.ndarray, ...]:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    if not cfg.root:
        raise LottoError(
            "data.name=imagefolder needs data.root (with train/<class>/ and test/<class>/)"
        )
    root = Path(cfg.root).expanduser()
    size = cfg.image_size or 64
    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()])
    splits = {}
    for split in ("train", "test", "val"):
        if (root / split).is_dir():
            try:
                ds = ImageFolder(str(root / split), transform=tf)
            except (FileNotFoundError, OSError) as e:
                raise LottoError(f"imagefolder {root / split}: {e}") from None
            splits[split] = ds
    if "train" not in splits or "test" not in splits:
        raise LottoError(f"imagefolder {root} needs train/<class>/ and test/<class>/ folders")
    if splits["train"].classes != splits["test"].classes:
        raise LottoError(f"imagefolder {root}: train and test have different classes")

    def arrays(ds: ImageFolder) -> tuple[np.ndarray, np.ndarray]:
        images = [ds[i][0].expand(3, -1, -1).numpy() for i in range(len(ds))]
        return np.stack(images), np.asarray(ds.targets)

    out = (*arrays(splits["train"]), *arrays(splits["test"]))
    if "val" in splits:
        out = out + arrays(splits["val"])
    return out


def _digits(cfg: DictConfig) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = d.target
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    test, train = order[:360], order[360:]
    return x[train], y[train], x[test], y[test]


def _synthetic(cfg: DictConfig) -> tuple[np.ndarray, ...]:
    """Random images labelled by a fixed random linear teacher: learnable, needs no files."""
    rng = np.random.default_rng(SPLIT_SEED)
    size, channels = cfg.image_size or 28, cfg.channels
    x = rng.integers(0, 256, size=(1500, channels, size, size), dtype=np.uint8)
    teacher = rng.standard_normal((channels * size * size, 10))
    y = np.argmax((x.reshape(len(x), -1) / 255.0 - 0.5) @ teacher, axis=1)
    return x[:1200], y[:1200], x[1200:], y[1200:]


LOADERS = {
    "fashion-mnist": _fashion_mnist,
    "mnist": lambda cfg: _torchvision_set("MNIST", cfg),
    "cifar10": lambda cfg: _torchvision_set("CIFAR10", cfg),
    "cifar100": lambda cfg: _torchvision_set("CIFAR100", cfg),
    "imagefolder": _imagefolder,
    "digits": _digits,
    "synthetic": _synthetic,
}


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-1] == size:
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)


def load_data(cfg: DictConfig, device: torch.device | str = "cpu") -> Data:
    """Load `cfg.name` into memory on `device`, with a fixed validation split from training."""
    if cfg.name not in LOADERS:
        raise LottoError(f"unknown dataset {cfg.name!r}; choose one of {', '.join(DATASETS)}")
    arrays = LOADERS[cfg.name](cfg)
    train_x, train_y, test_x, test_y = arrays[:4]
    if len(arrays) == 6:  # the data set brings its own validation split
        val_x, val_y = arrays[4], arrays[5]
    else:
        val_size = (
            cfg.val_size
            if cfg.val_size is not None
            else DEFAULT_VAL_SIZE.get(cfg.name, len(train_y) // 10)
        )
        if not 0 < val_size < len(train_y):
            raise LottoError(
                f"config key data.val_size: {val_size} must be between 1 and {len(train_y) - 1}"
            )
        order = np.random.default_rng(SPLIT_SEED).permutation(len(train_y))
        val, train = order[:val_size], order[val_size:]
        val_x, val_y, train_x, train_y = train_x[val], train_y[val], train_x[train], train_y[train]
    if cfg.subset is not None:
        if cfg.subset < 1:
            raise LottoError("config key data.subset: must be a positive number of examples")
        train_x, train_y = train_x[: cfg.subset], train_y[: cfg.subset]

    def images(a: np.ndarray) -> torch.Tensor:
        return _resize(torch.from_numpy(np.array(a, copy=True)).float().div_(255.0), cfg.image_size)

    tx, vx, sx = images(train_x), images(val_x), images(test_x)
    # per-channel statistics of the training split: no hand-copied constants per data set
    mean = tx.mean(dim=(0, 2, 3), keepdim=True)
    std = tx.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)

    def put(x: torch.Tensor) -> torch.Tensor:
        return ((x - mean) / std).to(device)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(a), dtype=torch.int64).to(device)

    augment = cfg.augment if cfg.augment is not None else cfg.name in ("cifar10", "cifar100")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    return Data(
        cfg.name,
        put(tx),
        labels(train_y),
        put(vx),
        labels(val_y),
        put(sx),
        labels(test_y),
        num_classes,
        bool(augment),
    )
