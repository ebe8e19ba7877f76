"""Spec -> nn.Module, torchvision state-dict loading, and registry entries for the presets.

Module names follow the spec's layer table (`ArchSpec.layers()[i].name`): ``stem``,
``blocks.<i>.{expand,dw,se,project,conv,shortcut}``, ``head``, ``pool``, ``hidden``, ``dropout``,
``classifier``. So a per-layer measurement can be joined to the table by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from lotto.arch.presets import PRESETS, preset
from lotto.arch.spec import (
    POOL,
    ArchSpec,
    BlockContext,
    adapt_to_resolution,
    load_spec,
    scale_width,
)
from lotto.errors import LottoError
from lotto.models import he_init, register

_ACT: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish}
_GATE: dict[str, type[nn.Module]] = {"hsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid}


def _norm(spec: ArchSpec) -> partial:
    return partial(nn.BatchNorm2d, eps=spec.bn_eps, momentum=spec.bn_momentum)


class Block(nn.Module):
    """One spec block: ir / ds = [expand] -> dw -> [se] -> project; conv = conv -> [se]."""

    def __init__(self, spec: ArchSpec, index: int):
        super().__init__()
        from torchvision.ops import Conv2dNormActivation, SqueezeExcitation  # see _stem

        b = spec.blocks[index]
        cin = spec.block_inputs()[index]
        norm, act = _norm(spec), _ACT[b.act]
        e = b.expansion(cin)
        self.residual = b.residual(cin)
        if b.skip == POOL:  # MnasNet's pooling SkipOp (spec docstring): pooled input + output
            self.shortcut = nn.AvgPool2d(b.stride, b.stride, ceil_mode=True)
        if b.type == "conv":
            self.conv = Conv2dNormActivation(
                cin, b.out, b.kernel, b.stride, norm_layer=norm, activation_layer=act
            )
        else:
            if b.has_expand(cin):
                self.expand = Conv2dNormActivation(
                    cin, e, 1, norm_layer=norm, activation_layer=act
                )
            self.dw = Conv2dNormActivation(
                e, e, b.kernel, b.stride, groups=e, norm_layer=norm, activation_layer=act
            )
        if b.se:
            width = b.out if b.type == "conv" else e
            self.se = SqueezeExcitation(
                width, spec.se_width(b, cin), activation=nn.ReLU,
                scale_activation=_GATE[spec.se_gate],
            )
        if b.type != "conv":
            self.project = Conv2dNormActivation(e, b.out, 1, norm_layer=norm, activation_layer=None)

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for name in ("expand", "dw", "conv", "se", "project"):
            module = getattr(self, name, None)
            if module is not None:
                y = module(y)
        shortcut = getattr(self, "shortcut", None)
        if shortcut is not None:
            return y + shortcut(x)
        return y + x if self.residual else y


class MobileNet(nn.Module):
    """A network built from an `ArchSpec` (kept as `.spec`)."""

    def __init__(self, spec: ArchSpec, blocks: Sequence[nn.Module] | None = None):
        """`blocks`: prebuilt `Block(spec, i)` modules, one per block (a supernet's scoring
        reuses them across networks: building ~200 modules costs more than scoring on a few
        hundred images); they are initialised again like the rest."""
        super().__init__()
        spec.validate()
        self.spec = spec
        self.stem = _stem(spec)
        if blocks is not None and len(blocks) != len(spec.blocks):
            raise ValueError(f"{len(blocks)} prebuilt blocks for {len(spec.blocks)} spec blocks")
        self.blocks = nn.Sequential(*(blocks if blocks is not None else
                                      (Block(spec, i) for i in range(len(spec.blocks)))))
        self.head = _head(spec)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hidden = _hidden(spec)
        self.dropout = nn.Dropout(spec.head.dropout)
        self.classifier = nn.Linear(spec.features if not spec.head.hidden else spec.head.hidden,
                                    spec.num_classes)
        he_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x))
        if self.head is not None:
            x = self.head(x)
        x = torch.flatten(self.pool(x), 1)
        if self.hidden is not None:
            x = self.hidden(x)
        return self.classifier(self.dropout(x))


def _stem(spec: ArchSpec) -> nn.Module:
    # torchvision imported where a spec network is built: importing it pulls in torch._dynamo
    # (1.5-2.7 s here), which every process training only LeNet or a conv net would pay
    from torchvision.ops import Conv2dNormActivation

    s = spec.stem
    return Conv2dNormActivation(
        spec.in_channels, s.channels, s.kernel, s.stride, norm_layer=_norm(spec),
        activation_layer=_ACT[s.act],
    )


def _head(spec: ArchSpec) -> nn.Module | None:
    if not spec.head.conv:
        return None
    from torchvision.ops import Conv2dNormActivation

    return Conv2dNormActivation(
        spec.blocks[-1].out, spec.head.conv, 1, norm_layer=_norm(spec),
        activation_layer=_ACT[spec.head.act],
    )


def _hidden(spec: ArchSpec) -> nn.Module | None:
    # efficient last stage: the wide 1x1 runs after pooling, without BN (an FC with bias)
    if not spec.head.hidden:
        return None
    return nn.Sequential(nn.Linear(spec.features, spec.head.hidden), _ACT[spec.head.act]())


def build_network(spec: ArchSpec) -> MobileNet:
    """The nn.Module of a spec (training mode, torchvision initialisation)."""
    return MobileNet(spec)


def build_block(spec: ArchSpec, context: BlockContext | str) -> nn.Module:
    """One unit of `spec.block_contexts()` alone, taking a (N, C, H, W) tensor of its in_shape.

    The classifier unit is pool -> flatten -> [hidden] -> dropout -> FC.
    """
    name = context if isinstance(context, str) else context.name
    spec.validate()
    if name == "stem":
        module: nn.Module = _stem(spec)
    elif name.startswith("blocks."):
        try:
            index = int(name.split(".", 1)[1])
            spec.blocks[index]
        except (ValueError, IndexError):
            raise LottoError(f"spec {spec.name!r} has no unit {name!r}") from None
        module = Block(spec, index)
    elif name == "head" and spec.head.conv:
        module = _head(spec)  # type: ignore[assignment]
    elif name == "classifier":
        hidden = _hidden(spec)
        width = spec.head.hidden or spec.features
        module = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), *([hidden] if hidden is not None else []),
            nn.Dropout(spec.head.dropout), nn.Linear(width, spec.num_classes),
        )
    else:
        raise LottoError(f"spec {spec.name!r} has no unit {name!r}")
    he_init(module)
    return module


# --------------------------------------------------------------------------------------------
# torchvision weights


def torchvision_key_map(model: nn.Module, state_dict: Mapping[str, Tensor]) -> dict[str, str]:
    """Map torchvision MobileNetV2 / MobileNetV3 / MNASNet keys to ours.

    torchvision registers its modules in execution order, and so do we, so the k-th entry of
    its state dict is our k-th entry; the mapping is checked by tensor kind (weight, bias,
    running_mean, running_var, num_batches_tracked) and shape. For MobileNetV3 this amounts to:

        features.0.*                    -> stem.*
        features.<i+1>.block.<j>.*      -> blocks.<i>.{expand,dw,se,project}.*  (those present)
        features.<n+1>.*                -> head.*
        classifier.0.* / classifier.3.* -> hidden.0.* / classifier.*

    MobileNetV2: features.<i+1>.conv.<j> (the last two are the projection conv and its BN) ->
    blocks.<i>.{expand,dw,project.0,project.1}; classifier.1 -> classifier. MNASNet:
    layers.0-7 -> stem and blocks.0 (the separable conv); layers.<8+s>.<r>.layers.{0,1,3,4,6,7}
    -> the expand / dw / project convs and BNs; layers.14-15 -> head; classifier.1 -> classifier.
    """
    ours = model.state_dict()
    theirs_keys, ours_keys = list(state_dict), list(ours)
    if len(theirs_keys) != len(ours_keys):
        raise LottoError(
            f"state dict has {len(theirs_keys)} tensors, the model {len(ours_keys)}: "
            "not the same architecture"
        )
    mapping = {}
    for t, o in zip(theirs_keys, ours_keys, strict=True):
        kind_t, kind_o = t.rsplit(".", 1)[-1], o.rsplit(".", 1)[-1]
        if kind_t != kind_o or tuple(state_dict[t].shape) != tuple(ours[o].shape):
            raise LottoError(
                f"state dict entry {t} {tuple(state_dict[t].shape)} does not fit "
                f"{o} {tuple(ours[o].shape)}: not the same architecture"
            )
        mapping[t] = o
    return mapping


def load_torchvision_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a torchvision mobilenet_v2 / mobilenet_v3_* / mnasnet state dict into our model."""
    mapping = torchvision_key_map(model, state_dict)
    model.load_state_dict({mapping[k]: v for k, v in state_dict.items()})


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load weights saved by us or by torchvision (a plain state dict; weights_only)."""
    try:
        sd = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LottoError(f"pretrained weights {path} not found") from None
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LottoError(f"cannot read pretrained weights {path}: {first}") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise LottoError(f"pretrained weights {path} are not a state dict of tensors")
    if set(sd) == set(model.state_dict()):
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            detail = " ".join(str(e).split())[:200]
            raise LottoError(f"pretrained weights {path} do not fit: {detail}") from None
    else:
        load_torchvision_state_dict(model, sd)


# --------------------------------------------------------------------------------------------
# Registry: build_model("mobilenet_v3_small", in_channels, num_classes, image_size, ...)


def _factory(name: str):
    def make(
        in_channels: int,
        num_classes: int,
        image_size: int,
        width_mult: float = 1.0,
        dropout: float | None = None,
        adapt: bool = True,
        pretrained: str | None = None,
        rule: str = "torchvision",
    ) -> nn.Module:
        if name in PRESETS:
            base = preset(name, width_mult, 224 if adapt else image_size, num_classes,
                          in_channels, rule)
        else:  # a spec file, or a run directory's best/final network
            base = load_spec(name)
            base = scale_width(base, width_mult) if width_mult != 1.0 else base
            base = base.replace(num_classes=num_classes, in_channels=in_channels,
                                resolution=base.resolution if adapt else image_size).validate()
        # small images: fewer early strides (see adapt_to_resolution)
        spec = adapt_to_resolution(base, image_size) if adapt else base
        if dropout is not None:
            spec = spec.replace(head=dataclasses.replace(spec.head, dropout=dropout)).validate()
        model = build_network(spec)
        if pretrained:
            load_pretrained(model, pretrained)
        return model

    make.__name__ = name
    make.__doc__ = f"{name} from its architecture spec (a preset, a spec file or a run)."
    return make


def spec_model_factory(source: str):
    """`build_model`'s factory for a spec file or a run directory (`lotto.arch.load_spec`)."""
    return _factory(source)


for _name in PRESETS:
    register(_name)(_factory(_name))
