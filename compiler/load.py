"""One entry point for every model qfab reads: a .qfab file, a quantized ONNX model (QDQ or
QOperator, imported without calibration), or a float ONNX model plus calibration data."""

import pathlib

import numpy as np

from qfab.base.errors import QfabError

from .build import build_graph, weights_from_fixed
from .frontends.onnx_import import import_onnx
from .modelfile import load as load_qfab
from .ptq import QuantConfig, quantize

__all__ = ["load_graph", "is_quantized_onnx", "calib_for"]


def is_quantized_onnx(fg):
    return bool(fg.qtypes) or any(n.fixed is not None for n in fg.nodes)


def load_graph(path, calib=None, config=None, *, notes=None):
    """The IR graph of ``path``. ``calib`` (float, the model's own layout) is needed only for a
    float ONNX model; ``config`` is a `QuantConfig`. ``notes`` (a list) collects import remarks."""
    path = pathlib.Path(path)
    if path.suffix == ".qfab":
        return load_qfab(path)
    if path.suffix != ".onnx":
        raise QfabError(f"{path}: expected a .onnx or .qfab file")
    fg = import_onnx(path)
    if notes is not None:
        notes.extend(getattr(fg, "notes", []))
    meta = {"source_model": path.name}
    if is_quantized_onnx(fg):
        if config is not None and config != QuantConfig():
            raise QfabError(f"{path} is already quantized; bit widths and calibration options do not apply")
        return build_graph(fg, fg.qtypes, weights_from_fixed(fg), metadata={**meta, "source": "onnx-quantized"})
    if calib is None:
        raise QfabError(f"{path} is a float model: give calibration data (--calib X.npy) to quantize it")
    return quantize(fg, calib_for(fg, calib), config or QuantConfig(), metadata=meta)


def calib_for(fg, calib):
    """Calibration data ``calib`` (float, the model's own layout) in the IR's layout, or a
    `QfabError` naming both shapes when it is not a float batch of the model's input shape."""
    from .reference import to_ir_layout
    calib = np.asarray(calib)
    shape = fg.shapes[fg.inputs[0]]
    model_shape = (shape[2], shape[0], shape[1]) if len(shape) == 3 and fg.input_layout.value == "NCHW" else shape
    if calib.ndim < 2 or calib.shape[1:] != model_shape or calib.dtype.kind != "f":
        raise QfabError(f"calibration data has shape {calib.shape} ({calib.dtype}); the model takes float "
                        f"inputs of shape (N, {', '.join(map(str, model_shape))})")
    return to_ir_layout(fg, calib)
