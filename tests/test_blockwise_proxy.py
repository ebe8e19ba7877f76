"""scripts/blockwise_proxy.py: a network's stages run through its slice of the shared weights
on the teacher's features reproduce the teacher's stage outputs when the slice holds the
teacher's weights (so its losses measure what a candidate lacks, not a wiring error); the
script scores every network of each draw."""

from __future__ import annotations

import torch
from test_fidelity import FAST, config
from torch import nn

from lotto.arch.build import build_network
from lotto.experiments.fidelity import prepare, run_fidelity
from lotto.search.supernet import Supernet, base_choices, make_adapt
from lotto.tasks import shared_data


def test_teacher_weights_in_the_slice_reproduce_every_stage(space_file, runs_dir, load_script):
    script = load_script("blockwise_proxy")
    cfg = config(space_file, runs_dir)
    space, _, _, _ = prepare(cfg)
    data = shared_data(cfg.data, torch.device("cpu"))
    net = Supernet(space, make_adapt(cfg, data), 0)
    big = base_choices(space, "ir")
    spec, where = net.member(big)
    torch.manual_seed(1)
    teacher = build_network(spec).eval()
    module = net._module(spec)
    with torch.no_grad():
        for m in teacher.modules():  # statistics of its own, so eval mode is not the identity
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        for name, view in net.params(spec, where, module).items():
            view.copy_(teacher.get_parameter(name))  # the teacher's weights into its slice
        module.load_state_dict(teacher.state_dict())
    feats = script.teacher_features(teacher, script.stage_ends(big), data.train_x[:16])
    assert len(feats) == len(space.stages) + 1
    with torch.no_grad():
        losses = script.stage_losses(net, big, feats, train=False)
    assert len(losses) == len(space.stages) and all(float(v) < 1e-10 for v in losses)
    with torch.no_grad():
        for w in net.weights.values():
            w.add_(0.1 * torch.randn_like(w))
        assert all(float(v) > 1e-3 for v in script.stage_losses(net, big, feats, train=False))


def test_script_scores_every_network_of_each_draw(space_file, runs_dir, load_script):
    script = load_script("blockwise_proxy")
    run_fidelity(config(space_file, runs_dir))
    table = script.main(["--runs-dir", str(runs_dir), "--config", str(space_file), *FAST,
                         "--steps", "3", "--teacher-steps", "4", "--score-images", "64"])
    assert len(table) == 4 and table.score.notna().all()
    stages = [c for c in table.columns if c.startswith("stage")]
    assert len(stages) == 2 and (table[stages] > 0).all().all()
    assert (runs_dir / "blockwise_proxy.csv").exists()
