"""Datasets for the trainer: held in memory on the training device, or streamed from disk.

Every loader yields uint8 NCHW images (an array, or image files decoded on demand) and int64
labels for the train, validation (held out from the training set, fixed split) and test splits.
`load_data` turns them into one `Data`:

- in memory (small sets): normalised float32 tensors on the training device, so that a batch is
  one index operation;
- streamed (a set above `data.stream_threshold_mb`, or `data.stream=true`): the images stay where
  they are and DataLoader workers decode each batch, in the order the trainer draws, with the same
  resizing and normalisation, so the same seed gives the same batches either way.

`Data.batches` and `eval_batches` hide the difference from the trainer.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from lotto.errors import LottoError

FASHION_MNIST_SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "digits", "synthetic")
# Validation examples held out of the training set when `data.val_size` is null (else 10%).
DEFAULT_VAL_SIZE = {"fashion-mnist": 5000, "mnist": 5000, "cifar10": 5000, "cifar100": 5000}
SPLIT_SEED = 0  # the validation split does not move with the training seed
IMAGEFOLDER_FALLBACK_SIZE = 64  # images of different sizes, and no data.image_size
STATS_SAMPLE = 10_000  # a streamed set's normalisation statistics come from this many images
CHUNK = 1024  # images per step when reading a whole split (statistics, loading into memory)
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


class Images(torch.utils.data.Dataset):
    """uint8 CHW images by index: rows of an array, or image files decoded (and resized to a
    `size` x `size` centre crop) on demand. Picklable, for DataLoader worker processes."""

    def __init__(
        self,
        array: np.ndarray | None = None,
        paths: Sequence[str] = (),
        channels: int = 3,
        size: int | None = None,
    ):
        self.array, self.paths, self.channels, self.size = array, list(paths), channels, size

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.array is not None:
            return torch.from_numpy(np.array(self.array[i], copy=True))
        import torchvision.transforms.functional as TF
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            img = img.convert("L" if self.channels == 1 else "RGB")
        if self.size is not None:
            if min(img.size) != self.size:
                img = TF.resize(img, self.size, antialias=True)  # the shorter side
            if img.size != (self.size, self.size):
                img = TF.center_crop(img, self.size)
        return TF.pil_to_tensor(img)

    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image."""
        if self.array is not None:
            return tuple(self.array.shape[1:])
        return tuple(self[0].shape) if self.size is None else (self.channels, self.size, self.size)

    def chunks(self, indices: np.ndarray, workers: int = 0) -> Iterator[torch.Tensor]:
        """The images at `indices`, CHUNK at a time, in order (files decoded by `workers`)."""
        batches = [indices[i : i + CHUNK].tolist() for i in range(0, len(indices), CHUNK)]
        if self.array is not None:
            for b in batches:
                yield torch.from_numpy(self.array[b])
            return
        yield from torch.utils.data.DataLoader(self, batch_sampler=batches, num_workers=workers)


@dataclass
class Split:
    """A data set's images and labels, before the validation split and normalisation."""

    images: Images
    labels: np.ndarray


class ImageStream:
    """A split left on disk (or in its source array): DataLoader workers decode, resize and stack
    each batch; it is normalised on the training device. Has `len` and `shape` like a tensor."""

    def __init__(
        self,
        images: Images,
        indices: np.ndarray,
        size: int | None,
        mean: torch.Tensor,
        std: torch.Tensor,
        device: torch.device,
        workers: int,
    ):
        self.images, self.indices, self.size = images, indices, size
        self.mean, self.std = mean.to(device), std.to(device)
        self.device, self.workers = device, workers
        c, h, w = images.shape()
        self.shape = (len(indices), c, size or h, size or w)

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, index_batches: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Normalised images of each batch of positions (in this split), in the given order."""
        sampler = [self.indices[b.cpu().numpy()].tolist() for b in index_batches]
        loader = torch.utils.data.DataLoader(
            self.images,
            batch_sampler=sampler,
            num_workers=self.workers,
            collate_fn=_Collate(self.size),
            pin_memory=self.device.type == "cuda",  # lets the copy below overlap compute
        )
        for x in loader:
            x = x.to(self.device, non_blocking=True)
            if x.dtype == torch.uint8:
                x = x.float().div_(255.0)
            yield (x - self.mean) / self.std


class _Collate:
    """Stack a batch in the worker; convert and resize there only when a resize is asked for,
    so that otherwise uint8 (a quarter of the bytes) crosses to the device."""

    def __init__(self, size: int | None):
        self.size = size

    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(images)
        return x if self.size is None or x.shape[-1] == self.size else _to_float(x, self.size)


@dataclass
class Data:
    name: str
    train_x: torch.Tensor | ImageStream
    train_y: torch.Tensor
    val_x: torch.Tensor | ImageStream
    val_y: torch.Tensor
    test_x: torch.Tensor | ImageStream
    test_y: torch.Tensor
    num_classes: int
    augment: bool

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    @property
    def streamed(self) -> bool:
        return isinstance(self.train_x, ImageStream)

    def batches(
        self, order: torch.Tensor, batch_size: int, first: int = 0, count: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training batches `first`, `first + 1`, ... (at most `count`) of the epoch whose
        examples come in `order`: batch b is `order[b * batch_size : (b + 1) * batch_size]`, only
        full batches (a set smaller than one batch is one batch)."""
        per_epoch = max(1, len(order) // batch_size)
        stop = per_epoch if count is None else min(per_epoch, first + count)
        device = self.train_y.device
        if isinstance(self.train_x, ImageStream):  # the workers take the order on the CPU
            index = [order[b * batch_size : (b + 1) * batch_size] for b in range(first, stop)]
            labels = (self.train_y[i.to(device)] for i in index)
            yield from zip(self.train_x.batches(index), labels)
            return
        order = order.to(device)
        for b in range(first, stop):
            i = order[b * batch_size : (b + 1) * batch_size]
            # index_select: ~0.06 ms a LeNet step less than x[i] (4% of it, measured 2026-12-06)
            yield self.train_x.index_select(0, i), self.train_y.index_select(0, i)


def eval_batches(
    x: torch.Tensor | ImageStream, y: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) in consecutive batches of `batch_size` (the last one may be smaller)."""
    starts = range(0, len(y), batch_size)
    if isinstance(x, ImageStream):
        index = [torch.arange(i, min(i + batch_size, len(y))) for i in starts]
        yield from zip(x.batches(index), (y[i : i + batch_size] for i in starts))
    else:
        for i in starts:
            yield x[i : i + batch_size], y[i : i + batch_size]


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


def _arrays(*arrays: np.ndarray) -> list[Split]:
    """(images, labels) array pairs -> Splits."""
    return [Split(Images(x), np.asarray(y)) for x, y in zip(arrays[::2], arrays[1::2])]


def _fashion_mnist(cfg: DictConfig) -> list[Split]:
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
            return _arrays(arrays[0][:, None], arrays[1], arrays[2][:, None], arrays[3])
    if cfg.download:
        return _torchvision_set("FashionMNIST", cfg)
    raise LottoError(
        f"Fashion-MNIST not found under {roots[0]}; install it with "
        "'apt-get install dataset-fashion-mnist' (or 'make data'), point data.root at the idx "
        "files, or set data.download=true"
    )


def _torchvision_set(cls_name: str, cfg: DictConfig) -> list[Split]:
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

    return _arrays(*arrays(train), *arrays(test))


def channels_option(cfg: DictConfig) -> int | None:
    """`data.channels` as a number, or None for auto."""
    value = str(cfg.channels).strip().lower()
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise LottoError(f"config key data.channels: {cfg.channels!r} must be auto, 1 or 3")
    return int(value)


def _scan_images(
    paths: Sequence[str], need_gray: bool = True, need_size: bool = True
) -> tuple[bool, tuple[int, int] | None]:
    """(every image is grayscale, the size they all share or None), reading headers only and
    stopping as soon as what is needed is known (a colour image; two sizes). Setting
    data.channels and data.image_size skips the scan of a big folder."""
    from PIL import Image

    gray, size = True, None
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                mode, this = img.mode, img.size
        except OSError as e:
            raise LottoError(f"imagefolder: cannot read {path}: {e}") from None
        gray = gray and mode in _GRAY_MODES
        size = this if i == 0 else (size if size == this else None)
        if (not need_gray or not gray) and (not need_size or size is None):
            break
    return gray, size


def _imagefolder(cfg: DictConfig) -> list[Split]:
    from torchvision.datasets import ImageFolder

    if not cfg.root:
        raise LottoError(
            "data.name=imagefolder needs data.root (with train/<class>/ and test/<class>/)"
        )
    root = Path(cfg.root).expanduser()
    folders = {}
    for split in ("train", "test", "val"):
        if (root / split).is_dir():
            try:  # lists the files only; images are decoded later, in memory or streamed
                folders[split] = ImageFolder(str(root / split))
            except (FileNotFoundError, OSError) as e:
                raise LottoError(f"imagefolder {root / split}: {e}") from None
    if "train" not in folders or "test" not in folders:
        raise LottoError(f"imagefolder {root} needs train/<class>/ and test/<class>/ folders")
    if any(f.classes != folders["train"].classes for f in folders.values()):
        raise LottoError(f"imagefolder {root}: train, test and val have different classes")

    paths = [p for f in folders.values() for p, _ in f.samples]
    channels, size = channels_option(cfg), cfg.image_size
    if channels is not None and channels not in (1, 3):
        raise LottoError(
            f"config key data.channels: imagefolder images have 1 or 3, not {channels}"
        )
    if channels is None or size is None:
        gray, shared = _scan_images(paths, need_gray=channels is None, need_size=size is None)
        channels = channels or (1 if gray else 3)
        # one shared size is kept (a non-square one centre-cropped to its shorter side)
        size = size or (min(shared) if shared else IMAGEFOLDER_FALLBACK_SIZE)
    order = ("train", "test", "val")
    return [
        Split(
            Images(paths=[p for p, _ in folders[s].samples], channels=channels, size=size),
            np.asarray(folders[s].targets),
        )
        for s in order
        if s in folders
    ]


def _digits(cfg: DictConfig) -> list[Split]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = d.target
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    test, train = order[:360], order[360:]
    return _arrays(x[train], y[train], x[test], y[test])


def _synthetic(cfg: DictConfig) -> list[Split]:
    """Random images labelled by a fixed random linear teacher: learnable, needs no files."""
    rng = np.random.default_rng(SPLIT_SEED)
    size, channels = cfg.image_size or 28, channels_option(cfg) or 1
    x = rng.integers(0, 256, size=(1500, channels, size, size), dtype=np.uint8)
    teacher = rng.standard_normal((channels * size * size, 10))
    y = np.argmax((x.reshape(len(x), -1) / 255.0 - 0.5) @ teacher, axis=1)
    return _arrays(x[:1200], y[:1200], x[1200:], y[1200:])


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


def _to_float(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] at `size`: the one conversion both paths use."""
    return _resize(x.float().div_(255.0), size)


def _channel_stats(chunks: Iterator[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (1, C, 1, 1) of float images given in chunks, summed in float64
    so the result does not depend on how a split is cut into chunks."""
    total = total_sq = None
    count = 0
    for x in chunks:
        x = x.double()
        s, sq = x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += x.numel() // x.shape[1]
    mean = total / count
    var = (total_sq - count * mean.square()) / max(1, count - 1)
    shape = (1, -1, 1, 1)
    return mean.float().view(shape), var.clamp_min(0).sqrt().float().clamp_min(1e-6).view(shape)


def default_workers() -> int:
    """DataLoader workers when `data.workers` is null: the cores this process may use, up to 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(8, cores)


def load_data(cfg: DictConfig, device: torch.device | str = "cpu") -> Data:
    """Load `cfg.name` with a fixed validation split from training, in memory on `device` or
    streamed to it (see the module docstring)."""
    if cfg.name not in LOADERS:
        raise LottoError(f"unknown dataset {cfg.name!r}; choose one of {', '.join(DATASETS)}")
    for key, low in (("image_size", 1), ("workers", 0), ("stream_threshold_mb", 0)):
        if cfg.get(key) is not None and cfg.get(key) < low:
            raise LottoError(f"config key data.{key}: must be at least {low}")
    device = torch.device(device)
    splits = LOADERS[cfg.name](cfg)
    train, test = splits[0], splits[1]
    train_idx = np.arange(len(train.labels))
    if len(splits) == 3:  # the data set brings its own validation split
        val, val_idx = splits[2], np.arange(len(splits[2].labels))
    else:
        val_size = (
            cfg.val_size
            if cfg.val_size is not None
            else DEFAULT_VAL_SIZE.get(cfg.name, len(train_idx) // 10)
        )
        if not 0 < val_size < len(train_idx):
            raise LottoError(
                f"config key data.val_size: {val_size} must be between 1 and {len(train_idx) - 1}"
            )
        order = np.random.default_rng(SPLIT_SEED).permutation(len(train_idx))
        val, val_idx, train_idx = train, order[:val_size], order[val_size:]
    if cfg.subset is not None:
        if cfg.subset < 1:
            raise LottoError("config key data.subset: must be a positive number of examples")
        train_idx = train_idx[: cfg.subset]

    size = cfg.image_size
    c, h, w = train.images.shape()
    n_images = len(train_idx) + len(val_idx) + len(test.labels)
    megabytes = n_images * c * (size or h) * (size or w) * 4 / 2**20  # as float32 tensors
    # .get: a config saved before these keys existed (e.g. a lottery run read by --from)
    stream, threshold = cfg.get("stream"), cfg.get("stream_threshold_mb")
    if stream is None:
        stream = threshold is not None and megabytes > threshold
    workers = cfg.get("workers")
    workers = default_workers() if workers is None else workers
    labels = {
        "train": torch.tensor(train.labels[train_idx], dtype=torch.int64).to(device),
        "val": torch.tensor(val.labels[val_idx], dtype=torch.int64).to(device),
        "test": torch.tensor(test.labels, dtype=torch.int64).to(device),
    }
    parts = {"train": (train, train_idx), "val": (val, val_idx), "test": (test, None)}

    def read(split: Split, idx: np.ndarray | None) -> Iterator[torch.Tensor]:
        idx = np.arange(len(split.labels)) if idx is None else idx
        return (_to_float(x, size) for x in split.images.chunks(idx, workers))

    if stream:
        # statistics from (up to) STATS_SAMPLE training images: all of them in a small set, so
        # that a streamed and an in-memory load of it give the same numbers
        sample = train_idx
        if len(sample) > STATS_SAMPLE:
            pick = np.random.default_rng(SPLIT_SEED).choice(len(sample), STATS_SAMPLE, False)
            sample = sample[np.sort(pick)]
        mean, std = _channel_stats(read(train, sample))
        x = {
            k: ImageStream(
                s.images,
                np.arange(len(s.labels)) if idx is None else idx,
                size,
                mean,
                std,
                device,
                workers,
            )
            for k, (s, idx) in parts.items()
        }
    else:
        floats = {k: list(read(s, idx)) for k, (s, idx) in parts.items()}
        # per-channel statistics of the training split: no hand-copied constants per data set
        mean, std = _channel_stats(iter(floats["train"]))
        x = {k: (torch.cat(v) - mean).div_(std).to(device) for k, v in floats.items()}

    augment = cfg.augment if cfg.augment is not None else cfg.name in ("cifar10", "cifar100")
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    return Data(
        cfg.name,
        x["train"],
        labels["train"],
        x["val"],
        labels["val"],
        x["test"],
        labels["test"],
        num_classes,
        bool(augment),
    )
