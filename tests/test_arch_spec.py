"""Architecture spec: block strings, YAML, validation, exact counts, layer table, transforms."""

from __future__ import annotations

import pytest

from lotto.arch import (
    PRESETS,
    ArchSpec,
    BlockSpec,
    adapt_to_resolution,
    load_spec,
    make_divisible,
    parse_block,
    parse_blocks,
    preset,
    scale_width,
    spec_from_yaml,
)
from lotto.errors import LottoError

# docs/papers.md "Counted" values (params exact; MAdds in millions, to 0.1M as printed there)
COUNTED = {
    "mobilenet_v2": (3_504_872, 300.8),
    "mobilenet_v3_large": (5_483_032, 216.6),
    "mobilenet_v3_small": (2_542_856, 56.5),
    "mnasnet_a1": (3_887_038, 311.6),
    "mnasnet_b1": (4_383_312, 314.4),
}


@pytest.mark.parametrize("name", sorted(COUNTED))
def test_preset_counts_match_the_counted_values(name: str) -> None:
    spec = preset(name)
    params, madds = COUNTED[name]
    assert spec.params() == params
    assert round(spec.macs() / 1e6, 1) == madds


def test_v3_small_with_a_1280_head_counts_as_papers_md() -> None:
    spec = preset("mobilenet_v3_small")
    spec = spec.replace(head=spec.head.__class__(576, 1280, "hswish", 0.2))
    assert spec.params() == 2_946_568
    assert round(spec.macs() / 1e6, 1) == 56.9


def test_make_divisible_is_the_tf_rule() -> None:
    assert [make_divisible(x) for x in (72 / 4, 120 / 4, 480 / 4, 672 / 4, 960 / 4)] == [
        24, 32, 120, 168, 240]
    assert make_divisible(3) == 8  # at least the divisor
    assert make_divisible(83) == 80 and make_divisible(84) == 88
    assert make_divisible(0.75 * 24) == 24  # 16 would lose more than 10%


def test_v3_se_squeeze_widths_are_a_quarter_of_the_expansion() -> None:
    spec = preset("mobilenet_v3_large")
    mids = {(x.in_c, x.mid) for x in spec.layers() if x.op == "se"}
    assert mids == {(72, 24), (120, 32), (480, 120), (672, 168), (960, 240)}


def test_mnasnet_se_is_sized_from_the_block_input() -> None:
    spec = preset("mnasnet_a1")
    se = [x for x in spec.layers() if x.op == "se"]
    ins = spec.block_inputs()
    assert all(x.gate == "sigmoid" for x in se)
    assert [x.mid for x in se] == [max(1, int(ins[x.block] * 0.25)) for x in se]
    assert se[0].mid == 6  # first 40-channel block: input 24 -> 6 (V3's rule would give 24)


@pytest.mark.parametrize(
    "text",
    ["ir_k5_s2_e120_c40_se0.25_hs", "ir_k3_s1_e16_c16_re", "ds_k3_s1_c16_re6_noskip",
     "conv_k3_s2_c24_se0.5_hs_skip", "ir_k7_s1_e480_c80_re"],
)
def test_block_strings_round_trip(text: str) -> None:
    block = parse_block(text)
    assert block.format() == text
    assert parse_block(block.format()) == block


def test_block_string_defaults_and_forms() -> None:
    b = parse_block("ir_e64_c24")
    assert (b.kernel, b.stride, b.se, b.act, b.skip) == (3, 1, 0.0, "relu", None)
    assert parse_block("ir_e64_c24_se").se == 0.25
    assert parse_block("ir_e64_c24_hswish").act == "hswish"
    assert parse_block("ir_t6_c24", in_channels=16).exp == 96


def test_stage_strings_expand_repeats_and_ratios() -> None:
    blocks = parse_blocks(["ir_r3_k5_s2_t3_c40_se0.25"], in_channels=24)
    assert [b.stride for b in blocks] == [2, 1, 1]
    assert [b.exp for b in blocks] == [72, 120, 120]  # ratio of each block's own input
    assert all(b.out == 40 and b.se == 0.25 and b.kernel == 5 for b in blocks)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("xx_k3_c16", "unknown type"),
        ("ir_k3_s1_c16", "expansion"),
        ("ir_k3_e16", "output width"),
        ("ds_e16_c16", "only ir"),
        ("ir_k3_e16_c16_k5", "twice"),
        ("ir_q3_e16_c16", "cannot read"),
        ("ir_t6_c24", "needs the input width"),
        ("ir_r2_e6_c24", "repeat"),
        ("ir_k3.5_e16_c16", "integer"),
        ("ir_k1e3_e16_c16", "integer"),
    ],
)
def test_bad_block_strings_raise(text: str, message: str) -> None:
    with pytest.raises(LottoError, match=message):
        parse_block(text)


def _with_blocks(*blocks: str, resolution: int = 224, stem: int = 16) -> ArchSpec:
    base = preset("mobilenet_v3_small")
    return base.replace(
        blocks=tuple(parse_blocks(blocks, stem)), resolution=resolution,
        stem=base.stem.__class__(stem, 3, 2, "hswish"),
    )


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        (["ir_k3_s2_e64_c16_skip"], "stride 1"),
        (["ir_k3_s1_e64_c24_skip"], "equal widths"),
        (["ir_k4_s1_e64_c24"], "odd"),
        (["ir_k3_s3_e64_c24"], "stride must be 1 or 2"),
        (["ir_k3_s1_e0_c24"], "positive"),
        ([BlockSpec("ir", 3, 1, 64, -8)], "positive"),
        ([BlockSpec("ir", 3, 1, 64, 24, act="gelu")], "unknown activation"),
        ([BlockSpec("ir", 3, 1, 64, 24, se=1.5)], "SE ratio"),
    ],
)
def test_impossible_specs_raise(blocks: list, message: str) -> None:
    with pytest.raises(LottoError, match=message):
        _with_blocks(*blocks).validate()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("width_mult", "x", "width_mult"), ("bn_eps", 0.0, "bn_eps"), ("num_classes", 2.5, "integer"),
     ("se_rule", "mnas", "se_rule")],
)
def test_wrong_global_fields_raise(field: str, value: object, message: str) -> None:
    with pytest.raises(LottoError, match=message):
        preset("mobilenet_v2").replace(**{field: value}).validate()


def test_wrong_types_in_a_yaml_spec_are_lotto_errors() -> None:
    text = preset("mobilenet_v3_small").to_yaml()
    for old, new, message in [("conv: 576", "conv: big", "head conv"),
                              ("dropout: 0.2", "dropout: high", "dropout"),
                              ("channels: 16", "channels: -16", "stem channels")]:
        with pytest.raises(LottoError, match=message):
            spec_from_yaml(text.replace(old, new, 1))
    dict_block = preset("mobilenet_v3_small").to_dict()
    dict_block["blocks"][0] = {"type": "ir", "kernel": 3, "stride": 2, "exp": 16, "out": 16,
                               "se": "yes"}
    with pytest.raises(LottoError, match="SE ratio"):
        ArchSpec.from_dict(dict_block)


def test_resolution_too_small_for_the_total_stride() -> None:
    spec = preset("mobilenet_v3_large")
    assert spec.replace(resolution=17).validate().output_size() == 1
    with pytest.raises(LottoError, match="too small for total stride 32"):
        spec.replace(resolution=16).validate()
    with pytest.raises(LottoError, match="resolution"):
        spec.replace(resolution=0).validate()


def test_yaml_round_trip_and_file_io(tmp_path) -> None:
    for name in PRESETS:
        spec = preset(name)
        again = spec_from_yaml(spec.to_yaml())
        assert again == spec
    path = tmp_path / "net.yaml"
    preset("mnasnet_a1").save(path)
    assert load_spec(path) == preset("mnasnet_a1")
    assert load_spec("mobilenet_v2") == preset("mobilenet_v2")


def test_yaml_errors_are_lotto_errors(tmp_path) -> None:
    with pytest.raises(LottoError, match="neither a preset"):
        load_spec("no_such_net")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stem: {channels: 16}\nblocks: [ir_k3_e16_c16]\nhead: {}\nsize: 3\n")
    with pytest.raises(LottoError, match="unknown spec key"):
        load_spec(bad)
    bad.write_text("stem: {channels: 16}\nblocks: [ir_k3_e16_c16_k3]\nhead: {}\nname: x\n")
    with pytest.raises(LottoError, match="twice"):
        load_spec(bad)
    bad.write_text("[1, 2")
    with pytest.raises(LottoError, match="cannot read"):
        load_spec(bad)


def test_yaml_accepts_stage_strings() -> None:
    text = (
        "name: tiny\nresolution: 32\nstem: {channels: 16, stride: 1}\n"
        "blocks: [ir_r2_s2_t4_c24_hs]\nhead: {conv: 64, hidden: 0}\n"
    )
    spec = spec_from_yaml(text)
    assert [b.exp for b in spec.blocks] == [64, 96]
    assert spec.to_dict()["blocks"] == ["ir_k3_s2_e64_c24_hs", "ir_k3_s1_e96_c24_hs"]


def test_layer_table_is_consistent() -> None:
    spec = preset("mobilenet_v3_large")
    layers = spec.layers()
    assert [x.index for x in layers] == list(range(len(layers)))
    assert sum(x.params for x in layers) == spec.params()
    # shapes chain from one op to the next (SE and add keep the shape)
    for a, b in zip(layers[:-1], layers[1:], strict=True):
        if b.op != "add":
            assert (a.out_h, a.out_c) == (b.in_h, b.in_c), (a.name, b.name)
    ops = {x.op for x in layers}
    assert ops == {"conv", "dwconv", "pwconv", "se", "add", "pool", "fc"}
    assert sum(x.op == "add" for x in layers) == 10  # residual blocks of V3-Large
    assert {x.act for x in layers if x.op == "dwconv"} == {"relu", "hswish"}
    assert all(x.bn for x in layers if x.op in ("conv", "dwconv", "pwconv"))
    stem = layers[0]
    assert stem.bytes_in == 4 * 224 * 224 * 3 and stem.bytes_out == 4 * 112 * 112 * 16
    assert stem.bytes_weights == 4 * (16 * 27 + 32)
    fc = layers[-1]
    assert (fc.op, fc.in_c, fc.out_c) == ("fc", 1280, 1000)
    assert (fc.params, fc.macs) == (1_281_000, 1_280_000)


def test_block_contexts_cover_the_network() -> None:
    spec = preset("mobilenet_v3_small")
    ctx = spec.block_contexts()
    assert [c.name for c in ctx] == (
        ["stem"] + [f"blocks.{i}" for i in range(11)] + ["head", "classifier"])
    assert sum(c.params for c in ctx) == spec.params()
    assert sum(c.macs for c in ctx) == spec.macs()
    for a, b in zip(ctx[:-1], ctx[1:], strict=True):
        assert a.out_shape == b.in_shape
    assert ctx[1].key == "ir_k3_s2_e16_c16_se0.25_re@112x112x16+se_exp_hsigmoid"
    assert ctx[-1].out_shape == (1, 1, 1000)
    # equal units in different networks share a key; different inputs do not
    other = preset("mobilenet_v3_small", resolution=192)
    assert ctx[5].key != other.block_contexts()[5].key


def test_adapt_to_resolution_cuts_early_strides() -> None:
    spec = preset("mobilenet_v3_large", resolution=32, num_classes=10, in_channels=1)
    small = adapt_to_resolution(spec, 32)
    assert small.stem.stride == 1
    assert [b.stride for b in small.blocks][:2] == [1, 1]  # first stride-2 block now stride 1
    assert small.total_stride() == 8 and small.output_size() == 4
    assert small.params() == spec.params()  # strides do not change weights
    assert adapt_to_resolution(preset("mobilenet_v3_large"), 224) == preset("mobilenet_v3_large")
    assert adapt_to_resolution(spec, 28).output_size() == 4
    # V3-Small's first block (16 -> 16, stride 2) must not gain a residual when made stride 1
    s = adapt_to_resolution(preset("mobilenet_v3_small", resolution=32), 32)
    assert s.blocks[0].stride == 1 and s.blocks[0].skip is False
    assert not any(x.op == "add" and x.block == 0 for x in s.layers())


def test_scale_width_matches_the_reference_multiplier_for_v3() -> None:
    for name in ("mobilenet_v3_large", "mobilenet_v3_small"):
        scaled = scale_width(preset(name), 0.75)
        ref = preset(name, 0.75)
        assert scaled.params() == ref.params()
        assert scaled.width_mult == 0.75


def test_tf_multiplier_rule_reproduces_the_published_v3_counts() -> None:
    # MobileNetV3 paper Table 3: Large 0.75 155M MAdds / 4.0M; Small 0.75 44M / 2.0M
    large = preset("mobilenet_v3_large", 0.75, rule="tf")
    small = preset("mobilenet_v3_small", 0.75, rule="tf")
    assert abs(large.macs() / 155e6 - 1) < 0.02 and round(large.params() / 1e6, 1) == 4.0
    assert abs(small.macs() / 44e6 - 1) < 0.02 and round(small.params() / 1e6, 1) == 2.0
    assert large.head.hidden == 1280 and large.blocks[1].exp == 4 * large.blocks[0].out
    # the torchvision rule undercounts (docs/papers.md / docs/latency.md warn about 140M vs 155M)
    assert preset("mobilenet_v3_large", 0.75).macs() < 0.92 * large.macs()
    for name in ("mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v2", "mnasnet_a1"):
        assert preset(name, rule="tf") == preset(name)
    with pytest.raises(LottoError, match="rule"):
        preset("mobilenet_v2", rule="keras")


def test_specs_are_immutable_and_hashable() -> None:
    spec = preset("mnasnet_b1")
    with pytest.raises(AttributeError):
        spec.name = "x"  # type: ignore[misc]
    assert hash(spec) == hash(preset("mnasnet_b1"))
    assert spec.replace(num_classes=10) != spec


# ---- pooling skip (MnasNet's "pooling" SkipOp) ----------------------------------------------


def test_pooling_skip_round_trips_and_is_checked() -> None:
    text = "ir_k3_s2_e96_c16_re_poolskip"
    block = parse_block(text)
    assert block.skip == "pool" and block.format() == text
    assert block.shortcut(16) == "pool" and not block.residual(16)
    spec = _with_blocks(text, resolution=32)
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(LottoError, match="needs stride 2"):
        _with_blocks("ir_k3_s1_e96_c16_poolskip").validate()
    with pytest.raises(LottoError, match="equal widths"):
        _with_blocks("ir_k3_s2_e96_c24_poolskip").validate()


def test_pooling_skip_layers_are_free_and_destride_to_identity() -> None:
    pooled = _with_blocks("ds_k3_s2_c16_poolskip", resolution=32)
    plain = _with_blocks("ds_k3_s2_c16", resolution=32)
    rows = [x for x in pooled.layers() if x.block == 0]
    pool = next(x for x in rows if x.op == "avgpool")
    add = next(x for x in rows if x.op == "add")
    assert (pool.in_h, pool.out_h, pool.stride, pool.in_c) == (16, 8, 2, 16)
    assert (add.in_h, add.out_h) == (8, 8)
    assert (pooled.macs(), pooled.params()) == (plain.macs(), plain.params())  # pool, add: free
    assert pooled.block_contexts()[1].key != plain.block_contexts()[1].key
    small = adapt_to_resolution(pooled, 8, min_output=8)  # the block loses its stride ...
    assert small.blocks[0].stride == 1 and small.blocks[0].skip is True  # ... pool = identity
