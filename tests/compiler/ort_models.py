"""Quantized ONNX models written by onnxruntime's own quantizer, for comparing with qfab.

``ort_quantize`` runs ``quant_pre_process`` (folds BatchNorm) and ``quantize_static`` on a float
model, with a calibration reader over real data, in QDQ or QOperator format.

Why 7-bit weights (``reduce_range=True``) and ``ort_session(..., by_definition=True)``: on x86 CPUs
without AVX-VNNI / AVX512-VNNI, onnxruntime's u8 x s8 integer kernels (QLinearConv, QLinearMatMul
and the fused forms of QDQ Conv/MatMul/Gemm) add pairs of u8 * s8 products in 16 bits with
saturation (``vpmaddubsw``), so with full-range int8 weights (255 * 127 * 2 > 32767) onnxruntime's
output depends on the CPU (digits MLP: 2560 of 3600 codes off by up to 19 LSB; with VNNI, or with
the graph evaluated as written, 0). onnxruntime documents ``reduce_range`` for such CPUs: weights in
[-64, 64] keep every pair sum within 16 bits, so its integer kernels are exact on every CPU. Models
qfab writes itself keep full-range weights; for those the session disables graph optimizations, so
onnxruntime runs the QDQ definition (DequantizeLinear -> float op -> QuantizeLinear) on any CPU.
"""

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from qfab.compiler.frontends.onnx_write import float_model, save


class _Reader(CalibrationDataReader):
    def __init__(self, x, batch=32):
        self._items = iter([{"input": x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self._items, None)


def ort_session(model, by_definition=False):
    """A CPU ``InferenceSession`` of ``model`` (a path or serialized bytes). ``by_definition``: no
    graph optimizations, so a QDQ model is run as its DQ -> float op -> Q definition instead of
    onnxruntime's fused integer kernels (which saturate full-range int8 weights without VNNI)."""
    options = ort.SessionOptions()
    if by_definition:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def ort_quantize(float_path, out_path, calib, fmt="QDQ", activations="uint8", per_channel=True):
    """``quantize_static`` with 7-bit weights (``reduce_range``, see the module docstring): the
    integer kernels of onnxruntime then give the same codes on CPUs with and without VNNI."""
    pre = str(out_path) + ".pre.onnx"
    quant_pre_process(str(float_path), pre, skip_symbolic_shape=True)
    quantize_static(pre, str(out_path), _Reader(calib),
                    quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=per_channel, reduce_range=True)
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
