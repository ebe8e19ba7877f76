"""GPU check of the training path (scripts/cuda_check.py checks latency), for a GPU machine.

Checks, printing one line each and exiting 1 if any fails:
- the trainer on CUDA in fp32, bfloat16 autocast (`train.amp`) and channels_last: finite losses,
  pruned weights exactly zero after training, throughput (timed after a synchronising `.item()`);
- CPU and CUDA give close weights after the same fp32 steps from the same init;
- `lotto lottery` end to end on CUDA with a tiny budget.
Needs no data files (synthetic and scikit-learn digits).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import torch

from lotto.config import load_config
from lotto.data import load_data
from lotto.models import build_model
from lotto.pruning import apply_masks, ones_masks
from lotto.train import train

failures: list[str] = []


def report(ok: bool, text: str) -> None:
    print(("PASS " if ok else "FAIL ") + text, flush=True)
    if not ok:
        failures.append(text)


def trainer_modes(device: torch.device, iterations: int) -> None:
    cfg = load_config(
        "lottery",
        overrides=[
            "data.name=synthetic",
            "data.channels=3",
            "data.image_size=32",
            f"train.iterations={iterations}it",
            f"train.eval_every={iterations}it",
            "train.batch_size=128",
            "train.optimizer=sgd",
            "train.lr=0.05",
        ],
    )
    data = load_data(cfg.data, device)
    models = ("conv4", "resnet20", "mobilenet_v3_small")
    for name in models:
        for amp, channels_last in ((False, False), (True, False), (True, True)):
            cfg.train.amp, cfg.train.channels_last = amp, channels_last
            torch.manual_seed(0)
            try:
                model = build_model(name, 3, data.num_classes, 32)
            except Exception as e:  # a family not registered in this checkout
                report(False, f"{name}: cannot build ({e})")
                break
            gen = torch.Generator().manual_seed(0)
            masks = {
                k: (torch.rand(m.shape, generator=gen) > 0.8).float()  # 80% pruned
                for k, m in ones_masks(model).items()
            }
            result = train(model, data, cfg.train, seed=0, device=device, masks=masks)
            params = dict(model.named_parameters())
            zeros = all(bool((params[k][m.to(device) == 0] == 0).all()) for k, m in masks.items())
            finite = result.train_loss == result.train_loss
            rate = result.iterations * cfg.train.batch_size / result.seconds
            report(
                finite and zeros,
                f"{name:<20} amp={amp!s:<5} channels_last={channels_last!s:<5} "
                f"loss={result.train_loss:.3f} pruned-zero={zeros} {rate:,.0f} img/s",
            )


def cpu_cuda_parity(device: torch.device) -> None:
    cfg = load_config(
        "lottery",
        overrides=[
            "data.name=digits",
            "train.iterations=50it",
            "train.eval_every=50it",
            "train.optimizer=sgd",
            "train.lr=0.01",
        ],
    )
    finals = {}
    for dev in (torch.device("cpu"), device):
        data = load_data(cfg.data, dev)
        torch.manual_seed(0)
        model = build_model("lenet_300_100", 1, 10, data.image_size)
        masks = ones_masks(model)
        apply_masks(model, masks)
        train(model, data, cfg.train, seed=0, device=dev, masks=masks)
        finals[dev.type] = torch.cat([p.detach().cpu().flatten() for p in model.parameters()])
    diff = (finals["cpu"] - finals["cuda"]).abs().max().item()
    report(diff < 1e-3, f"CPU vs CUDA fp32 after 50 SGD steps: max |dw| = {diff:.2e}")


def lottery_end_to_end(device: torch.device) -> None:
    from typer.testing import CliRunner

    from lotto.cli import app

    with tempfile.TemporaryDirectory() as runs:
        result = CliRunner().invoke(
            app,
            [
                "lottery",
                "--rounds",
                "2",
                "--device",
                device.type,
                "--runs-dir",
                runs,
                "data.name=digits",
                "train.iterations=200it",
                "train.eval_every=50it",
            ],
        )
        report(result.exit_code == 0, f"lotto lottery on {device.type}: exit {result.exit_code}")
        if result.exit_code != 0:
            print(result.output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--device", default="cuda", help="cpu for a dry run of this script")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here")
        sys.exit(2)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{name} torch {torch.__version__}", flush=True)
    trainer_modes(device, args.iterations)
    if device.type == "cuda":
        cpu_cuda_parity(device)
    lottery_end_to_end(device)
    print(f"{len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
