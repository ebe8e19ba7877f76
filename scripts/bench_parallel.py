"""Many trainings at once, measured side by side in one run (`make bench`; figures are noisy on a
shared machine: compare the rows of one run, and note the load average printed first).

- `bench_busy_core`: one default LeNet-300-100 training (Fashion-MNIST, 1,500 iterations) on an
  idle machine and beside one busy single-threaded process, under torch's default threads,
  `--threads 1`, `OMP_WAIT_POLICY=PASSIVE` and lotto's defaults. Goal: busy / idle <= 2x.
- `bench_process_pool`: one lottery round (3 variants, tiny budget) and the default rethink grid
  (tiny budget), serial vs `process` with 2 workers.
- `bench_batched`: one lottery round of LeNet-300-100 (3 variants x 1 and x 3 seeds), one by one
  vs batched replicas (`lotto.replicas`), at 1 and 2 threads. Goal: batched >= 2x for 9.
Each training runs in a fresh interpreter, so that thread settings read at import time apply.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One training in a fresh interpreter: argv = iterations, torch threads (0 = torch's choice),
# "lotto" to apply lotto's CLI thread defaults first. Prints the training's seconds.
_TRAIN = """
import sys
iterations, threads, defaults = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "lotto"
if defaults:
    from lotto.cli.app import thread_defaults
    thread_defaults()
import torch
if threads:
    torch.set_num_threads(threads)
from lotto.config import load_config
from lotto.data import load_data
from lotto.models import build_model
from lotto.train import train
cfg = load_config("lottery", overrides=[f"train.iterations={iterations}it",
                                        f"train.eval_every={iterations}it", "device=cpu"])
data = load_data(cfg.data)
torch.manual_seed(0)
model = build_model("lenet_300_100", 1, 10, 28)
result = train(model, data, cfg.train, seed=0, device=torch.device("cpu"))
print(result.seconds, torch.get_num_threads())
"""

BUSY_SETTINGS = {  # name: (torch threads, extra environment, apply lotto's defaults)
    "torch default threads": (0, {}, False),
    "--threads 1": (1, {}, False),
    "OMP_WAIT_POLICY=PASSIVE": (0, {"OMP_WAIT_POLICY": "PASSIVE"}, False),
    "lotto defaults": (0, {}, True),
}


def _one_training(iterations: int, threads: int, env: dict, defaults: bool) -> tuple[float, int]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", _TRAIN, str(iterations), str(threads),
         "lotto" if defaults else "plain"],
        env={**clean, **env}, capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout.split()
    return float(out[0]), int(out[1])


def bench_busy_core(iterations: int = 1500) -> list[dict]:
    """Training seconds idle vs beside one busy core, per thread setting; prints a table."""
    rows = []
    print(f"busy core: LeNet-300-100, {iterations} iterations; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    for name, (threads, env, defaults) in BUSY_SETTINGS.items():
        idle, used = _one_training(iterations, threads, env, defaults)
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.5)
            busy, _ = _one_training(iterations, threads, env, defaults)
        finally:
            hog.kill()
            hog.wait()
        rows.append({"setting": name, "threads": used, "idle_s": idle, "busy_s": busy,
                     "slowdown": busy / idle})
        print(f"  {name:26s} threads={used}  idle {idle:6.1f} s  busy {busy:6.1f} s  "
              f"slowdown {busy / idle:4.1f}x  (goal <= 2x)", flush=True)
    return rows


def _lotto(args: list[str], runs: Path) -> float:
    """Wall seconds of one `lotto` command (a fresh process, as a user runs it)."""
    lotto = Path(sys.executable).parent / "lotto"
    start = time.perf_counter()
    subprocess.run([str(lotto), *args, "--runs-dir", str(runs)], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"})
    return time.perf_counter() - start


def bench_process_pool(iterations: int = 300) -> list[dict]:
    """Serial vs `process` with 2 workers: one lottery round (3 variants, 1 and 3 seeds), and
    the default rethink grid at a tiny budget. Wall time of the whole command, imports included."""
    lottery = ["lottery", f"train.iterations={iterations}it", f"train.eval_every={iterations}it",
               "--rounds", "1", "device=cpu"]
    rethink = ["rethink", "train.iterations=40it", "finetune.iterations=10it",
               "train.eval_every=40it", "grid.seeds=1", "device=cpu", "data.subset=6000"]
    cases = [(f"lottery round 1, {s} seed(s)", [*lottery, "--seeds", str(s)]) for s in (1, 3)]
    cases.append(("rethink default grid (tiny)", rethink))
    rows = []
    print(f"process pool: serial vs process x2; load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in cases:
            times = {}
            for label, extra in (("serial", []), ("process x2", ["--workers", "2"])):
                times[label] = _lotto([*args, *extra, "--name", label.replace(" ", "")],
                                      Path(tmp) / name.replace(" ", "_"))
            rows.append({"case": name, **times,
                         "speedup": times["serial"] / times["process x2"]})
            print(f"  {name:30s} serial {times['serial']:6.1f} s  process x2 "
                  f"{times['process x2']:6.1f} s  speedup {rows[-1]['speedup']:4.2f}x",
                  flush=True)
    return rows


def _round_replicas(data: object, seeds: int) -> tuple[list, list[int], list]:
    """A lottery round's trainings: ticket, reinit and random_mask (one 20%-pruned mask, its
    random twin) per seed; a round's variants share their seed's batches, as in `lottery`."""
    import torch

    from lotto.models import build_model
    from lotto.pruning import layer_rates, magnitude_prune, ones_masks, prunable

    models, seed_list, masks = [], [], []
    for seed in range(seeds):
        for variant in ("ticket", "reinit", "random_mask"):
            torch.manual_seed(seed + (1000 if variant == "reinit" else 0))
            model = build_model("lenet_300_100", data.in_channels, data.num_classes,
                                data.image_size)
            weights = {k: p.detach() for k, p in prunable(model).items()}
            mask = magnitude_prune(weights, ones_masks(model), layer_rates(model, 0.2))
            if variant == "random_mask":
                gen = torch.Generator().manual_seed(seed)
                mask = {k: m.flatten()[torch.randperm(m.numel(), generator=gen)].view_as(m)
                        for k, m in mask.items()}
            models.append(model)
            seed_list.append(seed * 1000 + 1)
            masks.append(mask)
    return models, seed_list, masks


def bench_batched(iterations: int = 500, threads: tuple[int, ...] = (1, 2),
                  repeats: int = 1) -> list[dict]:
    """One lottery round of LeNet-300-100 (Fashion-MNIST if installed, else synthetic 28x28) on
    the CPU, 3 variants x 1 and x 3 seeds: one by one with `train` vs `train_replicas`, at each
    thread count. images/s counts training images (replicas x iterations x batch); the time
    includes the evaluations every `eval_every` (lottery's default, 100 iterations)."""
    import copy

    import torch

    from lotto.config import load_config
    from lotto.data import FASHION_MNIST_SYSTEM_ROOT, load_data
    from lotto.replicas import train_replicas
    from lotto.train import train

    name = "fashion-mnist" if FASHION_MNIST_SYSTEM_ROOT.exists() else "synthetic"
    cfg = load_config("lottery", overrides=[f"data.name={name}", "device=cpu",
                                            f"train.iterations={iterations}it"])
    data = load_data(cfg.data)
    cpu = torch.device("cpu")
    before = torch.get_num_threads()
    rows = []
    print(f"batched replicas: LeNet-300-100 on {name}, {iterations} iterations per training; "
          f"load average {os.getloadavg()[0]:.2f} at start")
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for seeds in (1, 3):
            models, seed_list, masks = _round_replicas(data, seeds)
            best = {"serial": float("inf"), "batched": float("inf")}
            for _ in range(repeats):  # interleaved, fastest kept: the machine is shared
                serial = copy.deepcopy(models)
                start = time.perf_counter()
                for model, seed, mask in zip(serial, seed_list, masks):
                    train(model, data, cfg.train, seed=seed, device=cpu, masks=mask)
                best["serial"] = min(best["serial"], time.perf_counter() - start)
                batched = copy.deepcopy(models)
                start = time.perf_counter()
                train_replicas(batched, data, cfg.train, seeds=seed_list, device=cpu,
                               masks=masks)
                best["batched"] = min(best["batched"], time.perf_counter() - start)
            images = len(models) * iterations * cfg.train.batch_size
            row = {"threads": n_threads, "replicas": len(models),
                   **{f"{k}_s": v for k, v in best.items()},
                   **{f"{k}_img_s": images / v for k, v in best.items()},
                   "speedup": best["serial"] / best["batched"]}
            rows.append(row)
            print(f"  threads={n_threads} {len(models)} replicas  serial {best['serial']:6.1f} s "
                  f"({row['serial_img_s']:6.0f} img/s)  batched {best['batched']:6.1f} s "
                  f"({row['batched_img_s']:6.0f} img/s)  speedup {row['speedup']:4.2f}x"
                  + ("  (goal >= 2x)" if len(models) == 9 else ""), flush=True)
    torch.set_num_threads(before)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["busy", "pool", "batched"], action="append",
                        help="run only these parts (repeatable; default: all)")
    parser.add_argument("--busy-iterations", type=int, default=1500)
    parser.add_argument("--pool-iterations", type=int, default=300)
    parser.add_argument("--batched-iterations", type=int, default=500)
    parser.add_argument("--batched-repeats", type=int, default=1)
    args = parser.parse_args()
    parts = set(args.only or ["busy", "pool", "batched"])
    if "busy" in parts:
        bench_busy_core(args.busy_iterations)
    if "pool" in parts:
        bench_process_pool(args.pool_iterations)
    if "batched" in parts:
        bench_batched(args.batched_iterations, repeats=args.batched_repeats)


if __name__ == "__main__":
    main()
