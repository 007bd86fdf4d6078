"""Quantized ONNX models written by onnxruntime's own quantizer, for comparing with qfab.

``ort_quantize`` runs ``quant_pre_process`` (folds BatchNorm) and ``quantize_static`` on a float
model, with a calibration reader over real data, in QDQ or QOperator format.
"""

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from qfab.compiler.frontends.onnx_write import float_model, save


class _Reader(CalibrationDataReader):
    def __init__(self, x, batch=32):
        self._items = iter([{"input": x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self._items, None)


def ort_quantize(float_path, out_path, calib, fmt="QDQ", activations="uint8", per_channel=True):
    pre = str(out_path) + ".pre.onnx"
    quant_pre_process(str(float_path), pre, skip_symbolic_shape=True)
    quantize_static(pre, str(out_path), _Reader(calib),
                    quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=per_channel)
    return out_path


def residual_cnn(path, seed=0, pool="avg"):
    """A small float CNN with every operator the importers map: Conv (+BN), Relu, residual Add,
    AveragePool, MaxPool, GlobalAveragePool, Flatten, Gemm. Random weights (for equality tests)."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.4):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    layers = [
        ("conv", w(8, 1, 3, 3), w(8, scale=0.1), 1, 1, 1), ("relu",),
        ("residual", [("conv", w(8, 8, 3, 3, scale=0.15), w(8, scale=0.1), 1, 1, 1), ("relu",),
                      ("conv", w(8, 1, 3, 3, scale=0.3), w(8, scale=0.1), 1, 1, 8)]), ("relu",),
        ("avgpool" if pool == "avg" else "maxpool", 2, 2),
        ("conv", w(16, 8, 3, 3, scale=0.15), w(16, scale=0.1), 1, 1, 1),
        ("bn", 1 + w(16, scale=0.1), w(16, scale=0.1), w(16, scale=0.1), 1 + np.abs(w(16, scale=0.1))), ("relu",),
        ("maxpool", 2, 2), ("gap",), ("flatten",), ("gemm", w(10, 16), w(10, scale=0.1)),
    ]
    save(float_model(layers, (1, 8, 8)), path)
    return path
