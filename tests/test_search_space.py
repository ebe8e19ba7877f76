"""The factorised search space (lotto.search.space) as `lotto search` uses it: MnasNet's
per-stage choices (op, kernel, SE, skip, width factor, repeat delta), valid specs, one-line errors.
"""

from __future__ import annotations

import copy
import itertools
import random

import pytest
import yaml

from lotto.config import defaults_path
from lotto.errors import LottoError
from lotto.search.space import SPACES, load_space, parse_space


@pytest.fixture(scope="module")
def default_space():
    return load_space(defaults_path("search"))


def test_default_space_is_mnasnets(default_space):
    """`space: mnasnet` (MnasNet sec. 4.1) over MobileNetV2's 7 stages, every stage searched."""
    assert yaml.safe_load(defaults_path("search").read_text())["space"] == "mnasnet"
    stages = default_space.stages
    assert len(stages) == 7
    # width x {0.75, 1, 1.25} by make_divisible(., 8); repeats base + {-1, 0, +1}, at least 1
    assert stages[0].widths == (16, 24) and stages[0].repeats == (1, 2)
    assert stages[1].widths == (24, 32) and stages[1].repeats == (1, 2, 3)
    assert stages[3].widths == (48, 64, 80) and stages[3].repeats == (3, 4, 5)
    assert stages[6].repeats == (1, 2)
    for s in stages:
        assert set(s.ops) == {"conv", "ds", "ir"} and s.expansions == (3.0, 6.0)
        assert s.kernels == (3, 5) and s.se == (False, True)
        assert s.skips == ("pool", "identity", "none")
    # 3 widths x 3 repeats x (conv, ds, ir3, ir6) x 2 kernels x 2 SE x 3 skips
    assert stages[3].size() == 432


def test_named_spaces_and_the_old_default(tmp_path):
    """mbv2-k357 is the space written out in search.yaml's comment (lotto's first default);
    a name works in a config, on `bench --space`, and a bad one is one line."""
    def same(a, b):
        return (a.base, a.stages, a.resolution) == (b.base, b.stages, b.resolution)

    old = parse_space(SPACES["mbv2-k357"])
    assert same(load_space("mbv2-k357"), old) and same(parse_space("mbv2-k357"), old)
    assert old.stages[0].ops == ("ds",) and old.stages[3].kernels == (3, 5, 7)
    assert old.stages[3].skips == ("identity", "none") and old.stages[3].size() == 432
    assert load_space("mnasnet", resolution=32).resolution == 32
    path = tmp_path / "space.yaml"
    path.write_text("space: mbv2-k357\n")
    assert same(load_space(path), old)
    with pytest.raises(LottoError, match="not a named space") as err:
        parse_space({"space": "mnasnet2"})
    assert "\n" not in str(err.value)


def test_a_named_space_with_some_keys_changed():
    """`{name: mnasnet, width_factors: [...]}`: the named space with those keys replaced (how a
    config narrows the default space without writing it out)."""
    narrow = parse_space({"name": "mnasnet", "width_factors": [0.5], "repeat_deltas": [0]})
    full = parse_space("mnasnet")
    assert len(narrow.stages) == len(full.stages)
    assert narrow.stages[3].widths == (32,) and narrow.stages[3].repeats == (4,)
    assert narrow.stages[3].kernels == full.stages[3].kernels == (3, 5)
    assert narrow.stages[3].skips == ("pool", "identity", "none")
    with pytest.raises(LottoError, match="not a named space"):
        parse_space({"name": "nope", "kernels": [3]})


def test_every_sample_is_a_valid_network_with_shared_stage_blocks(default_space):
    rng = random.Random(0)
    n_axes = len(default_space.axes())
    for i in range(40):
        indices = default_space.sample_indices(rng)
        assert len(indices) == n_axes
        choices = default_space.decode(indices)
        spec = default_space.network(indices, f"n{i}")
        assert spec == default_space.build(choices, f"n{i}")
        k = 0
        cin = spec.stem.channels
        for stage, (width, repeats, kernel, ratio, se, op, skip) in zip(default_space.stages,
                                                                         choices):
            blocks = spec.blocks[k:k + repeats]
            assert len(blocks) == repeats
            assert [b.stride for b in blocks] == [stage.stride] + [1] * (repeats - 1)
            for j, b in enumerate(blocks):
                assert (b.type, b.kernel, b.out, b.se) == (op, kernel, width, 0.25 if se else 0)
                assert (b.exp is None) == (op != "ir")
                if op == "ir":
                    assert b.exp == round((cin if j == 0 else width) * ratio)
                c = cin if j == 0 else width
                same = c == width
                # identity where legal (a pooling skip at stride 1 is the identity) unless
                # none; pool at a strided block of equal widths; none anywhere else
                want = ("identity" if b.stride == 1 and same and skip != "none"
                        else "pool" if b.stride == 2 and same and skip == "pool" else "none")
                assert b.shortcut(c) == want
            cin = width
            k += repeats
        assert k == len(spec.blocks)


def test_sampling_old_spaces_is_unchanged():
    """A space without ops/skips builds ir blocks with automatic residuals, as before."""
    space = parse_space({"base": "mobilenet_v3_small", "resolution": 32, "stages": [
        {"widths": [16, 24], "repeats": [1, 2], "stride": 2, "kernels": [3, 5],
         "expansions": [3], "se": [False, True]}]})
    assert space.size() == 2 * 2 * 2 * 2
    assert all(b.type == "ir" and b.skip is None for s in space.sample(10, 1) for b in s.blocks)
    assert [a for _, a, _ in space.axes()] == ["width", "repeats", "kernel", "se"]


@pytest.mark.parametrize("stage, field", [
    ({"width": 24, "stride": 2, "kernels": [4]}, "kernels"),
    ({"width": 24, "stride": 3}, "stride"),
    ({"width": 24, "ops": ["pool"]}, "ops"),
    ({"width": 24, "expansions": [0]}, "expansions"),
    ({"widths": [0]}, "widths"),
    ({"width": 24, "act": "gelu"}, "act"),
    ({"widths": [24], "width": 24}, "width"),
])
def test_illegal_stage_is_one_line_naming_stage_and_field(tmp_path, stage, field):
    data = {"space": copy.deepcopy(SPACES["mnasnet"])}
    data["space"]["stages"][2] = stage
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(LottoError) as err:
        load_space(path)
    message = str(err.value)
    assert "\n" not in message
    assert f"stages[2] field {field}" in message


def test_carriers_cover_ops_and_skips():
    space = parse_space({"base": "mobilenet_v3_small", "resolution": 32, "ops": ["ds", "ir"],
                         "skips": [True, False], "expansions": [3, 6], "stages": [
                             {"widths": [16], "repeats": [2], "stride": 2, "kernels": [3]}]})
    kinds = {(b.type, b.exp, b.skip) for c in space.carriers() for b in c.blocks}
    assert {"ds", "ir"} == {k[0] for k in kinds}
    assert (("ir", 48, None) in kinds and ("ir", 96, None) in kinds
            and any(k[2] is False for k in kinds))
    # ds ignores the expansion ratio: one carrier per (op, skip), not per ratio
    assert sum(1 for c in space.carriers() if c.blocks[0].type == "ds") == 2


def test_carriers_are_packed_and_cover_every_unit(default_space):
    """Packed carriers hold exactly the units of the one-stage-at-a-time enumeration (every
    stage choice with every input width the previous stage can give), in far fewer networks."""
    from lotto.latency.units import unit_keys

    space = default_space
    reference, n_reference = set(), 0
    for i, stage in enumerate(space.stages):
        for cin in (space.stages[i - 1].widths if i else (space.base.stem.channels,)):
            for width in stage.widths:
                for k, e, se, op, skip in itertools.product(stage.kernels, stage.expansions,
                                                            stage.se, stage.ops, stage.skips):
                    if op != "ir" and e != stage.expansions[0]:
                        continue
                    choices = [(s.widths[0], max(s.repeats), s.kernels[0], s.expansions[0],
                                s.se[0], s.ops[0], s.skips[0]) for s in space.stages]
                    if i:
                        choices[i - 1] = (cin, *choices[i - 1][1:])
                    choices[i] = (width, max(stage.repeats), k, e, se, op, skip)
                    reference |= {key for _, key in unit_keys(space.build(choices, "ref"))}
                    n_reference += 1
    carriers = list(space.carriers())
    packed = {key for c in carriers for _, key in unit_keys(c)}
    assert packed == reference
    assert len(carriers) * 4 < n_reference  # 432 vs 2,113 networks for MnasNet's space
    samples = {key for s in space.sample(200, seed=5) for _, key in unit_keys(s)}
    assert samples <= packed


# ---- canonical encoding: different decisions mean different networks ------------------------


@pytest.fixture(scope="module")
def tiny_space():
    """Full of equivalent decisions: ds/conv ignore the expansion; a skip of a strided block is
    none unless it pools 16 -> 16; a pooling skip at stride 1 is the identity."""
    return parse_space({
        "base": "mobilenet_v3_small", "resolution": 32, "kernels": [3, 5], "expansions": [3, 6],
        "se": [False], "ops": ["conv", "ds", "ir"], "skips": ["pool", "identity", "none"],
        "stages": [{"widths": [16], "repeats": [1], "stride": 2, "kernels": [3]},
                   {"widths": [16, 24], "repeats": [1, 2], "stride": 2}]})


def test_canonical_equal_iff_same_network(tiny_space):
    """Over random samples of a space full of equivalent decisions, canonical-equal <=>
    spec-string-equal."""
    from lotto.search.evaluate import spec_key

    rng = random.Random(3)
    by_spec, by_canon = {}, {}
    for _ in range(600):
        ix = tiny_space.sample_indices(rng)
        canon = tiny_space.canonical(ix)
        assert tiny_space.canonical(canon) == canon  # a representative is its own
        key = spec_key(tiny_space.network(ix))
        assert spec_key(tiny_space.network(canon)) == key  # the same network
        by_spec.setdefault(key, set()).add(tuple(canon))
        by_canon.setdefault(tuple(canon), set()).add(key)
    assert all(len(v) == 1 for v in by_spec.values())
    assert all(len(v) == 1 for v in by_canon.values())
    assert len(by_spec) < 300  # the draw did hit equivalent decisions
    assert any("poolskip" in key for key in by_spec)


def test_size_counts_distinct_networks(tiny_space):
    """`Space.size` = distinct spec strings over every index vector = distinct canonicals."""
    from lotto.search.evaluate import spec_key

    vectors = list(itertools.product(*(range(n) for _, _, n in tiny_space.axes())))
    specs = {spec_key(tiny_space.network(ix)) for ix in vectors}
    canon = {tuple(tiny_space.canonical(ix)) for ix in vectors}
    assert tiny_space.size() == len(specs) == len(canon) < len(vectors)


def test_evolution_never_proposes_its_parents_network(tiny_space):
    """Tournament = population: the parent is the population's best. Every child changes one
    decision and builds a different network (without `canonical` many would not: the tiny
    space's expansion of a ds/conv block and its strided skips change nothing)."""
    from lotto.search.controllers import Evolution, Outcome

    options = [n for _, _, n in tiny_space.axes()]
    evo = Evolution(options, 0, {"population": 4, "tournament": 4}, tiny_space.canonical)
    children = 0
    for step in range(40):
        parent = max(evo.population, key=lambda m: m[1])[0] if evo.population else None
        asked = evo.ask(4, step)
        if len(evo.population) == evo.size:
            for child in asked:
                assert sum(a != b for a, b in zip(child, parent)) == 1
                assert tiny_space.canonical(child) != tiny_space.canonical(parent)
                children += 1
        evo.tell(asked, [Outcome(float(hash(tuple(s)) % 97), 0.5, 1.0) for s in asked])
    assert children >= 100
