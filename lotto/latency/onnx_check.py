"""The ONNX export and its numerical check with ONNX Runtime (optional extra `.[device]`).

`lotto build-v3 --export onnx` writes networks with `export_onnx` (TorchScript exporter, the
dynamo one as a fallback). `onnx_parity` exports a module the same way, runs it with ONNX
Runtime's CPU provider at one thread and compares its outputs with PyTorch eager on the same
input: the largest absolute difference, and that difference relative to the largest |output|.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lotto.arch import ArchSpec
from lotto.errors import LottoError


def available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(model: torch.nn.Module, spec: ArchSpec, path: Path) -> None:
    """Write `model` as ONNX (legacy TorchScript exporter: works offline, no onnxscript)."""
    try:
        import onnx
    except ImportError:
        raise LottoError("--export onnx needs the onnx package: pip install lotto[onnx]") from None
    from lotto.runs import atomic_write

    x = torch.zeros(1, spec.in_channels, spec.resolution, spec.resolution)
    model = model.eval()

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            errors = []
            for dynamo in (False, True):
                try:
                    torch.onnx.export(model, (x,), str(tmp), dynamo=dynamo,
                                      input_names=["input"], output_names=["logits"])
                    break
                except Exception as e:  # the other exporter may work where one does not
                    errors.append(f"{'dynamo' if dynamo else 'torchscript'}: "
                                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            else:
                raise LottoError("ONNX export is unavailable here (" + "; ".join(errors) + ")")
        onnx.checker.check_model(onnx.load(str(tmp)))

    atomic_write(path, write)


def onnx_parity(module: nn.Module, input_shape: tuple[int, ...], *, seed: int = 0,
                path: Path | None = None) -> dict[str, Any]:
    """Export `module` to ONNX, run it with ONNX Runtime, compare with PyTorch eager."""
    if not available():
        raise LottoError("the ONNX Runtime check needs onnx and onnxruntime: "
                         "pip install -e '.[onnx,device]'")
    import onnxruntime as ort

    model = module.eval()
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed))
    b, c, h, w = input_shape
    spec = ArchSpec.__new__(ArchSpec)  # export_onnx reads only the input size of the spec
    object.__setattr__(spec, "in_channels", c)
    object.__setattr__(spec, "resolution", h)
    if h != w or b != 1:
        raise LottoError("onnx_parity: batch 1, square inputs only (as export_onnx writes them)")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(path) if path is not None else Path(tmp) / "model.onnx"
        export_onnx(model, spec, target)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        out = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    with torch.inference_mode():
        ref = model(x)
    diff = float((out - ref).abs().max())
    scale = float(ref.abs().max()) or 1.0
    return {"max_abs_diff": diff, "max_rel_diff": diff / scale,
            "onnxruntime": ort.__version__, "shape": list(out.shape)}
