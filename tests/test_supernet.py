"""The weight-sharing supernet proxy: slicing, parity with a standalone network, BN
recalibration, training, and `lotto search` with search.proxy=supernet (cache, resume, a failed
sample). Tiny setting: digits (8 px), a 2-stage space at 32 px, a few supernet steps."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from lotto.config import load_config
from lotto.errors import LottoError
from lotto.experiments.common import shared_data
from lotto.experiments.search import load_search_space, run_search
from lotto.search.supernet import (
    Supernet,
    _clipped_backward,
    arms_for_step,
    base_choices,
    ensure_supernet,
    keep_sets,
    layout,
    make_adapt,
    opened_axes,
    phase_at,
    recalibrate,
    score,
    take,
    train_supernet,
)

FAST = ["data.name=digits", "data.val_size=200", "proxy.width_mult=1.0", "proxy.min_output=2",
        "device=cpu", "search.batch_size=2", "search.samples=4", "search.proxy=supernet",
        "supernet.steps=6", "supernet.batch_size=32", "supernet.recal_batches=2",
        "supernet.recal_batch_size=64", "search.controller=random"]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def quick_plots(monkeypatch):
    import lotto.experiments.search as search

    monkeypatch.setattr(search, "plot", lambda *a: a[-1].write_bytes(b""))


def config(space_file: Path, runs_dir: Path, *extra: str):
    return load_config("search", space_file, [*FAST, f"run.runs_dir={runs_dir}", *extra])


def test_take_is_first_channels_and_kernel_centre():
    w = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    part = take(w, (1, 2, 3, 3))
    assert torch.equal(part, w[:1, :2, 1:4, 1:4])
    assert torch.equal(take(torch.arange(6.0), (4,)), torch.arange(4.0))
    with pytest.raises(LottoError, match="does not fit"):
        take(w, (3, 3, 5, 5))


def sampled_members(net: Supernet, space, seed: int, seen: set[str], n: int = 6):
    """`n` random networks of the space as (choices, spec, where, standalone network holding
    its slice); the op types drawn are added to `seen`."""
    rng = random.Random(seed)
    for _ in range(n):
        ix = space.sample_indices(rng)
        choices = space.decode(ix)
        seen.update(c[5] for c in choices)
        spec, where = net.member(choices)
        yield choices, spec, where, net.network(spec, list(layout(space, ix)))


def member_and_slice_outputs(net: Supernet, choices, model, x: torch.Tensor):
    """(supernet output, standalone output) of one member in train mode, with the same dropout
    draws on both sides (after the supernet built its module: an init draws from the
    generator)."""
    model.train()
    with torch.no_grad():
        net.forward(choices, x)
        torch.manual_seed(0)
        want = net.forward(choices, x)
        torch.manual_seed(0)
        got = model(x)
    return want, got


def test_standalone_network_matches_the_supernet_slice(space_file, runs_dir):
    """A network built with its slice computes what the supernet computes for it (train mode:
    batch statistics on both sides), for networks of every block type."""
    cfg = config(space_file, runs_dir)
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    net = Supernet(space, make_adapt(cfg, data), seed=0)
    with torch.no_grad():  # the classifier's init gives logits ~0.01: scaled to order 1
        net.weights["classifier.weight"].mul_(100)
    x = data.train_x[:16]
    seen: set[str] = set()
    for choices, _, _, model in sampled_members(net, space, 3, seen):
        want, got = member_and_slice_outputs(net, choices, model, x)
        assert want.abs().mean() > 0.1  # order-1 outputs
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert seen == {"conv", "ds", "ir"}


def test_recalibration_is_the_cumulative_average_of_batch_statistics(space_file, runs_dir):
    cfg = config(space_file, runs_dir)
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    net = Supernet(space, make_adapt(cfg, data), seed=0)
    spec, where = net.member(net.largest)
    model = net.network(spec, where)
    bn = model.stem[1]
    means = []
    hook = model.stem[0].register_forward_hook(
        lambda m, i, o: means.append(o.detach().mean((0, 2, 3))))
    recalibrate(model, data, batches=3, batch_size=50, seed=0, device=CPU)
    hook.remove()
    assert len(means) == 3 and bn.momentum is None
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=1e-4,
                               atol=1e-5)


def test_training_the_supernet_teaches_its_networks(space_file, runs_dir):
    cfg = config(space_file, runs_dir, "supernet.steps=25", "supernet.rule=sandwich")
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    net = Supernet(space, make_adapt(cfg, data), seed=0)
    spec, where = net.member(net.largest)
    before = score(net, spec, where, data, cfg.supernet, seed=0, device=CPU)["val_accuracy"]
    stats = train_supernet(net, data, cfg.supernet, seed=0, device=CPU)
    accs = [score(net, *net.member(c), data, cfg.supernet, seed=0, device=CPU)["val_accuracy"]
            for c in (net.largest, net.smallest)]
    assert stats["steps"] == 25 and stats["seconds"] > 0
    assert before < 0.2 and min(accs) > 0.3, (before, accs)  # chance: 0.1


def test_supernet_search_trains_once_caches_and_resumes(space_file, runs_dir):
    cfg = config(space_file, runs_dir)
    first = run_search(cfg)
    sn = first.summary["supernet"]
    assert first.summary["proxy"] == "supernet" and sn["cached"] is False
    assert Path(sn["weights"]).exists() and Path(sn["weights"]).with_suffix(".json").exists()
    assert len(first.metrics) == 4 and (first.metrics.status == "ok").all()
    assert first.metrics.val_accuracy.between(0, 1).all()
    # a rerun of the same run: nothing trained or scored again
    again = run_search(cfg)
    assert again.metrics.equals(first.metrics)
    # another controller seed: the supernet and the scores come from the caches
    other = run_search(config(space_file, runs_dir, "seed=0", "search.controller=evolution",
                              "search.evolution.population=2", "search.evolution.tournament=2",
                              "run.name=evo"))
    assert other.summary["supernet"]["cached"] is True
    both = other.metrics.merge(first.metrics, on="spec", suffixes=("", "_first"))
    assert (both.val_accuracy == both.val_accuracy_first).all()


def test_killed_supernet_search_resumes_where_it_stopped(space_file, runs_dir):
    cfg = config(space_file, runs_dir, "proxy.cache=false")
    part = run_search(cfg, stop_after=1)
    assert len(part.metrics) == 2
    full = run_search(cfg)
    assert len(full.metrics) == 4
    assert full.metrics.head(2).equals(part.metrics)


def test_corrupt_supernet_cache_is_trained_again(space_file, runs_dir):
    cfg = config(space_file, runs_dir)
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    path, meta = ensure_supernet(cfg, space, data, seed=0, device=CPU)
    assert meta["cached"] is False
    assert ensure_supernet(cfg, space, data, seed=0, device=CPU)[1]["cached"] is True
    path.write_bytes(b"not safetensors")
    path2, meta2 = ensure_supernet(cfg, space, data, seed=0, device=CPU)
    assert path2 == path and meta2["cached"] is False
    assert json.loads(path.with_suffix(".json").read_text())["steps"] == 6


def test_failed_sample_under_the_supernet_gets_reward_zero(space_file, runs_dir, monkeypatch):
    monkeypatch.setenv("LOTTO_TEST_FAULT", "raise:step=0,sample=1")
    result = run_search(config(space_file, runs_dir, "proxy.cache=false"))
    row = result.metrics[result.metrics["sample"] == 1].iloc[0]
    assert row.status == "failed" and row.reward == 0.0
    assert len(result.failures) == 1 and (result.metrics.status == "ok").sum() == 3


def test_supernet_parallel_workers_give_the_serial_numbers(space_file, runs_dir):
    serial = run_search(config(space_file, runs_dir, "proxy.cache=false", "run.name=a"))
    par = run_search(config(space_file, runs_dir, "proxy.cache=false", "run.name=b",
                            "parallel.backend=process", "parallel.workers=2"))
    assert list(par.metrics.val_accuracy) == list(serial.metrics.val_accuracy)


@pytest.mark.parametrize("rule,override,needle", [
    (None, "supernet.rule=ofa", "supernet.rule"),
    (None, "supernet.steps=0", "supernet.steps"),
    (None, "supernet.clip=-1", "supernet.clip"),
    (None, "supernet.score_images=0", "supernet.score_images"),
    (None, "search.proxy=oracle", "search.proxy"),
    ("progressive", "supernet.phases=[[kernel],[kernel]]", "opened twice"),
    ("progressive", "supernet.phases=[[],[depth]]", "unknown axis depth"),
    ("progressive", "supernet.phase_share=[0.5,0.5]", "supernet.phase_share"),
    ("progressive", "supernet.base_op=mb", "supernet.base_op"),
    (None, "supernet.keep_end=1.5", "supernet.keep_end"),
])
def test_bad_supernet_settings_are_one_line(space_file, runs_dir, rule, override, needle):
    make = progressive if rule == "progressive" else config
    with pytest.raises(LottoError, match=needle):
        run_search(make(space_file, runs_dir, override))



def test_each_networks_gradient_is_capped_before_it_is_summed():
    """supernet.clip: a network's gradient (all shared tensors together) is scaled down to norm
    `clip` before it joins the others', so a network with a huge gradient (a no-skip path: ~30x
    the residual network's on Fashion-MNIST) cannot swamp Adam's shared second moments; one
    under the cap is added as it is."""
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    b = torch.nn.Parameter(torch.tensor([3.0]))
    big = 300 * (a * torch.tensor([3.0, 4.0])).sum()  # gradient (900, 1200) on a, none on b
    _clipped_backward(big, [a, b], clip=2.0)
    torch.testing.assert_close(a.grad, torch.tensor([1.2, 1.6]))  # norm 1500 -> 2
    assert b.grad is None
    small = 0.1 * (a.sum() + b.sum())  # norm 0.17: under the cap, added unscaled
    _clipped_backward(small, [a, b], clip=2.0)
    torch.testing.assert_close(a.grad, torch.tensor([1.3, 1.7]))
    torch.testing.assert_close(b.grad, torch.tensor([0.1]))


@pytest.mark.parametrize("clip", [0.0, 0.01])
def test_supernet_training_caps_each_networks_gradient(space_file, runs_dir, monkeypatch, clip):
    """train_supernet applies the cap per network: a sandwich step of 2 networks hands the
    optimiser a gradient of norm <= 2 x clip; without it (0) the same step's is far larger."""
    cfg = config(space_file, runs_dir, "supernet.steps=2", "supernet.rule=sandwich",
                 "supernet.random=0", f"supernet.clip={clip}")
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    net = Supernet(space, make_adapt(cfg, data), seed=0)
    norms = []
    step = torch.optim.Adam.step

    def record(opt, *a, **k):
        grads = [p.grad for group in opt.param_groups for p in group["params"]
                 if p.grad is not None]
        norms.append(float(torch.sqrt(sum(g.pow(2).sum() for g in grads))))
        return step(opt, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", record)
    train_supernet(net, data, cfg.supernet, seed=0, device=CPU)
    assert len(norms) == 2
    if clip:
        assert max(norms) <= 2 * clip + 1e-6, norms
    else:
        assert min(norms) > 0.1, norms


def test_score_images_scores_on_the_first_validation_images(space_file, runs_dir):
    """supernet.score_images=n: the score is the recalibrated network's accuracy and loss on
    the first n validation images (a cheaper score); null scores on all of them."""
    from lotto.train import evaluate

    cfg = config(space_file, runs_dir, "supernet.steps=4", "supernet.score_images=37")
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    net = Supernet(space, make_adapt(cfg, data), seed=0)
    train_supernet(net, data, cfg.supernet, seed=0, device=CPU)
    spec, where = net.member(net.largest)
    model = net.network(spec, where)
    recalibrate(model, data, int(cfg.supernet.recal_batches), int(cfg.supernet.recal_batch_size),
                0, CPU)
    for n in (37, None):
        cfg.supernet.score_images = n
        got = score(net, spec, where, data, cfg.supernet, seed=0, device=CPU)
        loss, acc = evaluate(model, data.val_x[:n], data.val_y[:n])
        assert (got["val_accuracy"], got["val_loss"]) == pytest.approx((acc, loss)), n


def test_scoring_path_equals_training_path_in_eval_mode(space_file, runs_dir):
    """What `score` evaluates (a standalone network holding its slice, BN recalibrated) is what
    the supernet trained: the same logits as the training path (`functional_call` through the
    shared weights) in eval mode with the same BN statistics, after a few training steps, for
    networks of every block type; order-1 outputs."""
    cfg = config(space_file, runs_dir, "supernet.steps=8", "supernet.rule=uniform")
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    net = Supernet(space, make_adapt(cfg, data), seed=0)
    train_supernet(net, data, cfg.supernet, seed=0, device=CPU)
    x = data.val_x[:32]
    seen: set[str] = set()
    for _, spec, where, model in sampled_members(net, space, 7, seen):
        recalibrate(model, data, batches=2, batch_size=64, seed=0, device=CPU)
        model.eval()
        shared = net._module(spec)
        shared.load_state_dict(model.state_dict())  # the recalibrated BN statistics
        shared.eval()
        with torch.no_grad():
            want = torch.func.functional_call(shared, net.params(spec, where, shared), (x,))
            got = model(x)
        assert want.abs().mean() > 0.1, want.abs().mean()  # order-1 logits
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert seen == {"conv", "ds", "ir"}


POOLED_SPACE = """
space:
  base: mobilenet_v3_small
  resolution: 32
  kernels: [3, 5]
  expansions: [3, 6]
  se: [false, true]
  ops: [conv, ds, ir]
  skips: [pool, identity, none]
  stages:
    - {widths: [16], repeats: [1, 2], stride: 2}
    - {widths: [16, 24], repeats: [1, 2], stride: 2}
"""


def test_supernet_over_mnasnets_choices_matches_its_slices(tmp_path, runs_dir):
    """MnasNet's per-stage choices (kernels {3, 5}, SE 0 / 0.25, pool / identity / none skips):
    a sliced standalone network computes what the supernet computes, pooling skips included
    (16 -> 16 strided blocks: the pooled input is added), and a supernet search runs."""
    space_file = tmp_path / "pooled.yaml"
    space_file.write_text(POOLED_SPACE)
    cfg = config(space_file, runs_dir)
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    net = Supernet(space, make_adapt(cfg, data), seed=0)
    with torch.no_grad():
        net.weights["classifier.weight"].mul_(100)
    x = data.train_x[:16]
    seen: set[str] = set()
    pooled = 0
    for choices, spec, _, model in sampled_members(net, space, 5, seen, n=12):
        pooled += any(b.skip == "pool" for b in spec.blocks)
        want, got = member_and_slice_outputs(net, choices, model, x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert pooled >= 2
    result = run_search(config(space_file, runs_dir, "search.controller=evolution"))
    assert (result.metrics.status == "ok").all() and len(result.metrics) == 4


def test_a_named_space_runs_a_supernet_search(runs_dir, monkeypatch):
    """`space: <name>` (a string in the config) reaches every consumer: validation, the
    supernet's key, its training record, the workers' jobs and the fidelity record."""
    import yaml
    from search_space import TINY_SPACE

    from lotto.search import space as space_module

    monkeypatch.setitem(space_module.SPACES, "tiny", yaml.safe_load(TINY_SPACE)["space"])
    cfg = load_config("search", None, [*FAST, f"run.runs_dir={runs_dir}", "space=tiny"])
    assert cfg.space == "tiny"
    result = run_search(cfg)
    assert (result.metrics.status == "ok").all() and len(result.metrics) == 4
    meta = json.loads(next((runs_dir / "search" / ".supernet").glob("*.json")).read_text())
    assert meta["config"]["space"]["stages"] == yaml.safe_load(TINY_SPACE)["space"]["stages"]


# ---- progressive shrinking (supernet.rule=progressive) ------------------------------------


def progressive(space_file, runs_dir, *extra: str):
    """Progressive shrinking with the phases these tests state (not the shipped defaults)."""
    return config(space_file, runs_dir, "supernet.rule=progressive", "supernet.nest_ds=false",
                  "supernet.phases=[[],[kernel],[repeats],[width,expansion,se],[op,skip]]",
                  "supernet.phase_share=[0.2,0.15,0.15,0.2,0.3]", "supernet.lr=0.005",
                  "supernet.clip=0", *extra)  # unclipped: 30 digits steps teach both ends


def varied_axes(space, base, arm) -> set[str]:
    """The axes on which `arm` differs from the base network."""
    return {axis for stage, b, c in zip(space.stages, base, arm)
            for (axis, _), x, y in zip(stage.choices(), b, c) if x != y}


def test_progressive_schedule_opens_axes_in_the_stated_order(space_file, runs_dir):
    """Phase 0 trains the base network alone; each later phase draws exactly the axes opened so
    far (kernel, then repeats, then width / expansion / SE, then op and skip), in that order."""
    cfg = progressive(space_file, runs_dir, "supernet.steps=200", "supernet.random=3")
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    net = Supernet(space, make_adapt(cfg, data), seed=0)
    base = base_choices(space, "ir")
    rng = random.Random(0)
    first: dict[str, int] = {}
    per_phase: dict[int, set[str]] = {}
    for step in range(200):
        arms = arms_for_step(net, cfg.supernet, step, rng)
        assert arms[0] == base  # the teacher
        k = phase_at(step, 200, list(cfg.supernet.phase_share))
        seen = per_phase.setdefault(k, set())
        if k == 0:
            assert arms == [base]
        for arm in arms[1:]:
            for axis in varied_axes(space, base, arm):
                seen.add(axis)
                first.setdefault(axis, step)
    assert sorted(per_phase) == [0, 1, 2, 3, 4]
    assert per_phase[0] == set()
    for k in range(1, 5):
        assert per_phase[k] == set(opened_axes(cfg.supernet, k)), (k, per_phase[k])
    order = sorted(first, key=first.get)
    assert order[0] == "kernel" and order[1] == "repeats"
    assert set(order[2:5]) == {"width", "expansion", "se"} and set(order[5:]) == {"op", "skip"}
    # the phase edges follow the shares (0.2, 0.15, 0.15, 0.2, 0.3 of 200 steps)
    assert [phase_at(s, 200, list(cfg.supernet.phase_share)) for s in (39, 40, 69, 70, 99,
                                                                       100, 139, 140)] == \
        [0, 1, 1, 2, 2, 3, 3, 4]


def test_progressive_phase_zero_trains_the_largest_network_only(space_file, runs_dir):
    """The base network is the space's largest ir network (every nested choice at its maximum;
    no ir network of the space has more MACs), and training in phase 0 alone moves only its
    tensors: the ds and conv blocks' weights stay at their initial values."""
    cfg = progressive(space_file, runs_dir, "supernet.steps=4", "supernet.phases=[[]]",
                      "supernet.phase_share=[1.0]")
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    base = base_choices(space, "ir")
    for stage, b in zip(space.stages, base):
        assert b[:5] == (max(stage.widths), max(stage.repeats), max(stage.kernels),
                         max(stage.expansions), True) and b[5:] == ("ir", "identity")
    big = space.build(base, "base").macs()
    rng = random.Random(1)
    for _ in range(40):
        choices = [c[:5] + ("ir", c[6]) for c in space.decode(space.sample_indices(rng))]
        assert space.build(choices, "x").macs() <= big
    net = Supernet(space, make_adapt(cfg, data), seed=0)
    before = {k: v.detach().clone() for k, v in net.weights.items()}
    train_supernet(net, data, cfg.supernet, seed=0, device=CPU)
    moved = {k for k, v in net.weights.items() if not torch.equal(v, before[k])}
    assert any(".ir." in k for k in moved) and "classifier.weight" in moved
    assert not any(".ds." in k or ".conv." in k for k in moved), sorted(moved)[:5]


def test_progressive_training_is_deterministic(space_file, runs_dir):
    cfg = progressive(space_file, runs_dir, "supernet.steps=10")
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    runs = []
    for seed in (0, 0, 1):
        net = Supernet(space, make_adapt(cfg, data), seed=0)
        train_supernet(net, data, cfg.supernet, seed=seed, device=CPU)
        runs.append(net.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_progressive_supernet_teaches_its_networks(space_file, runs_dir):
    cfg = progressive(space_file, runs_dir, "supernet.steps=30")
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    net = Supernet(space, make_adapt(cfg, data), seed=0)
    train_supernet(net, data, cfg.supernet, seed=0, device=CPU)
    small_ir = [c[:5] + ("ir", "identity") for c in net.smallest]  # nested axes at minimum
    accs = [score(net, *net.member(c), data, cfg.supernet, seed=0, device=CPU)["val_accuracy"]
            for c in (base_choices(space, "ir"), small_ir)]
    assert min(accs) > 0.3, accs  # chance: 0.1


def test_nested_ds_blocks_are_slices_of_the_ir_tensors(space_file, runs_dir):
    """supernet.nest_ds: a ds block holds no tensors of its own; its depthwise conv and
    projection are the first input-width channels of the ir block's at its position, and a
    sliced standalone network still computes what the supernet computes."""
    cfg = config(space_file, runs_dir, "supernet.nest_ds=true")
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    net = Supernet(space, make_adapt(cfg, data), seed=0, nest_ds=True)
    assert not any(".ds." in k for k in net.weights)
    assert any(".ds." in k for k in Supernet(space, make_adapt(cfg, data), seed=0).weights)
    with torch.no_grad():
        net.weights["classifier.weight"].mul_(100)
    x = data.train_x[:16]
    seen: set[str] = set()
    for choices, spec, where, model in sampled_members(net, space, 3, seen, n=8):
        for i, b in enumerate(spec.blocks):
            if b.type == "ds":
                s, r = where[i]
                ir = net.weights[f"s{s}.r{r}.ir.project.0.weight"]
                mine = model.blocks[i].project[0].weight
                assert torch.equal(mine, ir[:mine.shape[0], :mine.shape[1]])
        want, got = member_and_slice_outputs(net, choices, model, x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert "ds" in seen


ONE_NETWORK_SPACE = """
space:
  base: mobilenet_v3_small
  resolution: 32
  kernels: [3]
  expansions: [6]
  se: [false]
  ops: [ir]
  skips: [identity]
  stages:
    - {widths: [16], repeats: [1], stride: 2}
    - {widths: [24], repeats: [2], stride: 2}
"""


def test_one_network_space_scores_as_the_network_trained_standalone(tmp_path, runs_dir):
    """Rung (a) of the ablation ladder (scripts/supernet_ladder.py): a space of exactly one
    network, trained through the supernet path and scored with inherited weights + BN
    recalibration, scores what the same network trained standalone (`lotto.proxy.train_spec`,
    same steps, batch, lr and schedule) scores, within a few points. Any bug of the weight
    copy, the recalibration, eval mode or the score's data split breaks it."""
    from omegaconf import OmegaConf

    from lotto.proxy import train_spec

    path = tmp_path / "one.yaml"
    path.write_text(ONE_NETWORK_SPACE)
    cfg = config(path, runs_dir, "supernet.steps=60", "supernet.rule=uniform",
                 "supernet.lr=0.005", "supernet.clip=0", "supernet.nest_ds=false")
    space = load_search_space(cfg)
    assert space.size() == 1
    data = shared_data(cfg.data, CPU)
    net = Supernet(space, make_adapt(cfg, data), seed=0)
    train_supernet(net, data, cfg.supernet, seed=0, device=CPU)
    spec, where = net.member(space.decode(space.sample_indices(random.Random(0))))
    got = score(net, spec, where, data, cfg.supernet, seed=0, device=CPU)["val_accuracy"]
    tcfg = OmegaConf.merge(cfg.train, {"iterations": "60it", "lr": 0.005, "warmup": "0it",
                                       "weight_decay": 0.0, "batch_size": 32,
                                       "schedule": "cosine"})
    alone = train_spec(space.network([]), data, tcfg, seed=0, device=CPU, bn_momentum=0.1,
                       min_output=int(cfg.proxy.min_output)).val_accuracy
    assert alone > 0.6, alone  # the network learns (chance: 0.1)
    assert abs(got - alone) < 0.1, (got, alone)


def test_scoring_reuses_modules_and_carries_no_state(space_file, runs_dir):
    """`score` assembles each network from block modules built for earlier networks (one per
    position, block and input width): the result is the one freshly built modules give,
    whatever was scored before with them (every parameter refilled, BN statistics reset, then
    recalibrated on the given seed's batches), and no two positions share a module."""
    cfg = config(space_file, runs_dir, "supernet.steps=6")
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    net = Supernet(space, make_adapt(cfg, data), seed=0)
    train_supernet(net, data, cfg.supernet, seed=0, device=CPU)
    rng = random.Random(4)
    members = [net.member(net.largest), net.member(net.smallest)] + [
        net.member(space.decode(space.sample_indices(rng))) for _ in range(6)]
    got = [score(net, spec, where, data, cfg.supernet, seed=k % 2, device=CPU)
           for k, (spec, where) in enumerate(members * 2)]
    blocks = sum(len(spec.blocks) for spec, _ in members)
    assert len(net._scored) < blocks  # blocks were reused across networks
    model = net.network(*members[0], reuse=True)
    assert len({id(b) for b in model.blocks}) == len(model.blocks) > 2
    for k, (spec, where) in enumerate(members * 2):
        fresh = Supernet(space, make_adapt(cfg, data), seed=0)
        fresh.load(net.state_dict())
        want = score(fresh, spec, where, data, cfg.supernet, seed=k % 2, device=CPU)
        assert (got[k]["val_accuracy"], got[k]["val_loss"]) == (want["val_accuracy"],
                                                                want["val_loss"]), k


def oneshot_net(space_file, runs_dir):
    cfg = config(space_file, runs_dir, "supernet.rule=oneshot")
    space = load_search_space(cfg)
    data = shared_data(cfg.data, CPU)
    net = Supernet(space, make_adapt(cfg, data), seed=0, nest_ds=True)
    with torch.no_grad():  # the classifier's init gives logits ~0.01: scaled to order 1
        net.weights["classifier.weight"].mul_(100)
    return cfg, space, data, net


def test_oneshot_with_each_stages_own_op_is_the_member_network(space_file, runs_dir):
    """Keeping only a network's own op type in every stage computes that network (train mode,
    the same dropout draws), for networks of every op type."""
    _, space, data, net = oneshot_net(space_file, runs_dir)
    x = data.train_x[:16]
    rng = random.Random(3)
    seen = set()
    with torch.no_grad():
        for _ in range(6):
            choices = space.decode(space.sample_indices(rng))
            own = [{c[5]} for c in choices]
            seen |= set().union(*own)
            net.forward(choices, x)
            net.forward_summed(choices, own, x)  # modules built: their init draws are done
            torch.manual_seed(0)
            want = net.forward(choices, x)
            torch.manual_seed(0)
            got = net.forward_summed(choices, own, x)
            assert want.abs().mean() > 0.1
            assert torch.equal(got, want)
    assert seen == {"conv", "ds", "ir"}


def test_oneshot_sums_the_kept_op_types_of_a_stage(space_file, runs_dir, monkeypatch):
    """With two op types kept in the last stage, the head reads the sum of what each alone
    gives it (the stages before are the same single path)."""
    import lotto.search.supernet as sn

    _, space, data, net = oneshot_net(space_file, runs_dir)
    x = data.train_x[:16]
    heads = []
    call = sn._call

    def spy(path, name, h):
        if name == "head":
            heads.append(h.detach().clone())
        return call(path, name, h)

    monkeypatch.setattr(sn, "_call", spy)
    choices = space.decode(space.sample_indices(random.Random(5)))
    first = [{c[5]} for c in choices[:-1]]
    with torch.no_grad():
        for kept in ({"ds"}, {"ir"}, {"ds", "ir"}):
            net.forward_summed(choices, [*first, kept], x)
    ds, ir, both = heads
    assert ds.abs().mean() > 0.1 and not torch.allclose(ds, ir)
    torch.testing.assert_close(both, ds + ir, rtol=1e-5, atol=1e-5)


def test_oneshot_path_dropout_falls_to_keep_end(space_file, runs_dir):
    _, space, _, _ = oneshot_net(space_file, runs_dir)
    rng = random.Random(0)
    first = [keep_sets(space, 0, 100, 0.0, rng) for _ in range(20)]
    last = [keep_sets(space, 99, 100, 0.0, rng) for _ in range(20)]
    assert all(k == set(st.ops) for ks in first for k, st in zip(ks, space.stages))
    assert all(len(k) == 1 for ks in last for k in ks)  # single path at the end


def test_oneshot_first_step_trains_every_op_type_of_every_stage(space_file, runs_dir):
    """At the first step every op type is kept (keep probability 1), so the tensors of every
    op type at every stage move; a single-path rule moves one op type per stage."""
    cfg, _, data, net = oneshot_net(space_file, runs_dir)
    cfg.supernet.steps = 1
    before = {k: v.detach().clone() for k, v in net.weights.items()}
    train_supernet(net, data, cfg.supernet, seed=0, device=CPU)
    moved = {k.split(".")[0] + "." + k.split(".")[2] for k, v in net.weights.items()
             if k.startswith("s") and ".r0." in k and not torch.equal(v, before[k])}
    assert moved == {"s0.conv", "s0.ir", "s1.conv", "s1.ir"}  # ds: slices of ir (nest_ds)


def test_sandwich_ops_puts_every_arm_of_a_step_on_one_op_path(space_file, runs_dir):
    """`sandwich_ops`: each step's largest, smallest and random networks share one op type per
    stage, the nested choices of the ends stay the sandwich's, and over steps every op type of
    every stage is trained (plain `sandwich` keeps one op path per end)."""
    cfg = config(space_file, runs_dir, "supernet.rule=sandwich_ops", "supernet.random=2")
    space = load_search_space(cfg)
    net = Supernet(space, make_adapt(cfg, shared_data(cfg.data, CPU)), seed=0)
    op = 5  # position of the op type in a stage's choices
    rng = random.Random(0)
    seen: list[set[str]] = [set() for _ in space.stages]
    for step in range(40):
        arms = arms_for_step(net, cfg.supernet, step, rng)
        assert len(arms) == 4
        path = [c[op] for c in arms[0]]
        assert all([c[op] for c in arm] == path for arm in arms)
        for ends, arm in ((net.largest, arms[0]), (net.smallest, arms[1])):
            assert [c[:op] + c[op + 1:] for c in arm] == [c[:op] + c[op + 1:] for c in ends]
        for k, o in enumerate(path):
            seen[k].add(o)
    assert seen == [set(s.ops) for s in space.stages]
    assert any(len(s.ops) > 1 for s in space.stages)  # not vacuous


@pytest.mark.parametrize("rule, needle", [("oneshot", "one-shot: op types summed"),
                                          ("uniform", "(uniform)"),
                                          ("sandwich_ops", "one op path per step")])
def test_summary_names_the_supernet_rule(space_file, runs_dir, rule, needle):
    from lotto.experiments.search import proxy_description

    assert needle in proxy_description(config(space_file, runs_dir, f"supernet.rule={rule}"))
