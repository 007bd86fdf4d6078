"""The quantized ONNX operators: QDQ (QuantizeLinear / DequantizeLinear around float operators)
and QOperator (QLinearConv, QLinearMatMul, QGemm, QLinearAdd, QLinear(Global)AveragePool), as
``onnxruntime.quantization.quantize_static`` writes them.

They attach *fixed* quantization to the float graph that `onnx_import.Importer` builds: integer
weights and biases to layers, types to tensors. Handlers are plain functions of the importer.
"""

import numpy as np

from ..fgraph import FixedWeights
from ..ir import QType

__all__ = ["HANDLERS", "fixed_weights"]


def _int_kind(imp, dtype, what):
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu" or dtype.itemsize > 1:
        imp.fail(f"{what} has type {dtype}; qfab supports 8-bit (and narrower) integer tensors")
    return 8, dtype.kind == "i"


def _zp(imp, name, what):
    if not name:
        return np.zeros((), np.uint8)
    if name not in imp.m.initializers:
        imp.fail(f"{what} zero point {name!r} must be a constant")
    return np.asarray(imp.m.initializers[name])


def _scale(imp, name, what):
    if name not in imp.m.initializers:
        imp.fail(f"{what} scale {name!r} must be a constant")
    s = np.asarray(imp.m.initializers[name], dtype=np.float64)
    if not np.all(np.isfinite(s)) or not np.all(s > 0):
        imp.fail(f"{what} scale {name!r} must be positive and finite")
    return s


def _act_qtype(imp, scale_name, zp_name, what):
    scale = _scale(imp, scale_name, what)
    zp = _zp(imp, zp_name, what)
    if scale.size != 1 or zp.size != 1:
        imp.fail(f"{what} has a per-channel scale or zero point; activations need one per tensor")
    bits, signed = _int_kind(imp, zp.dtype, f"{what} zero point")
    return QType(bits=bits, signed=signed, scale=float(scale.reshape(())), zero_point=int(zp.reshape(())))


def _set_qtype(imp, t, qtype, what):
    old = imp.fg.qtypes.get(t)
    if old is not None and old != qtype:
        imp.fail(f"{what} {t!r} is quantized twice with different parameters ({old} and {qtype}); "
                 "qfab would need a requantization node there")
    imp.fg.qtypes[t] = qtype


def fixed_weights(imp, w_name, b_name, out_axis):
    """`FixedWeights` in the ONNX layout of ``w_name`` if it is a dequantized constant, else None."""
    if w_name not in imp.fixed:
        return None
    q, scale, zp, axis, dtype = imp.fixed[w_name]
    bits, signed = _int_kind(imp, dtype, f"weight {w_name!r}")
    channels = q.shape[out_axis]
    scale, zp = np.asarray(scale, np.float64).reshape(-1), np.asarray(zp, np.int64).reshape(-1)
    if scale.size != 1 and (scale.size != channels or axis % q.ndim != out_axis):
        imp.fail(f"weight {w_name!r} is quantized along axis {axis}, not per output channel")
    shape = [1] * q.ndim
    shape[out_axis] = -1
    w = q.astype(np.int64) - (zp.reshape(shape) if zp.size > 1 else zp.reshape(()))
    if np.any(zp != 0):
        lo, hi = int(w.min()), int(w.max())
        bits = 1 + max(abs(lo) - 1, hi, 0).bit_length()
        signed = True
        if bits > 8:
            imp.fail(f"weight {w_name!r} minus its zero point needs {bits} bits; qfab supports at most 8")
    b_int = None
    if b_name and b_name in imp.fixed:
        bq, _, bzp, _, bdtype = imp.fixed[b_name]
        b_int = bq.astype(np.int64).reshape(-1) - np.asarray(bzp, np.int64).reshape(-1)
        if b_int.size != channels:
            imp.fail(f"bias {b_name!r} has {b_int.size} values for {channels} channels")
    return FixedWeights(w_int=w, scales=np.broadcast_to(scale, (channels,)).copy(), bits=bits,
                        signed=signed, b_int=b_int)


def _dequantize_linear(imp):
    n, a = imp.node, imp.attrs()
    x = n.input[0]
    if x in imp.m.initializers:
        scale = _scale(imp, n.input[1], "DequantizeLinear")
        zp = _zp(imp, n.input[2] if len(n.input) > 2 else "", "DequantizeLinear")
        q = np.asarray(imp.m.initializers[x])
        if q.dtype.kind not in "iu":
            imp.fail(f"constant {x!r} has type {q.dtype}, not an integer type")
        if a.get("block_size", 0):
            imp.fail("blocked quantization (block_size) is not supported")
        axis = int(a.get("axis", 1))
        imp.fixed[n.output[0]] = (q, scale, zp, axis if axis >= 0 else axis + q.ndim, q.dtype)
        return
    t = imp.tensor(x)
    qtype = _act_qtype(imp, n.input[1], n.input[2] if len(n.input) > 2 else "", "DequantizeLinear")
    _set_qtype(imp, t, qtype, "tensor")
    imp.alias(x, n.output[0])


def _quantize_linear(imp):
    n = imp.node
    if imp.is_const(n.input[0]):
        imp.fail("QuantizeLinear of a constant should be folded before import")
    t = imp.tensor(n.input[0])
    qtype = _act_qtype(imp, n.input[1], n.input[2] if len(n.input) > 2 else "", "QuantizeLinear")
    _set_qtype(imp, t, qtype, "tensor")
    imp.alias(n.input[0], n.output[0])


def _expect_input(imp, index, scale_index, what="input"):
    """The activation at input ``index``, with its type from the operator's own scale/zp."""
    n = imp.node
    t = imp.tensor(n.input[index])
    _set_qtype(imp, t, _act_qtype(imp, n.input[scale_index], n.input[scale_index + 1], what), "tensor")
    return t


def _qweight(imp, w_index, out_axis):
    """Register a QLinear operator's raw weight input as a dequantized constant."""
    n = imp.node
    q = np.asarray(imp.m.initializers.get(n.input[w_index]))
    if n.input[w_index] not in imp.m.initializers or q.dtype.kind not in "iu":
        imp.fail(f"weight {n.input[w_index]!r} must be an integer constant")
    scale = _scale(imp, n.input[w_index + 1], "weight")
    zp = _zp(imp, n.input[w_index + 2], "weight")
    key = n.input[w_index] + "@" + (n.name or n.output[0])
    imp.fixed[key] = (q, scale, zp, out_axis, q.dtype)
    return key


def _qbias(imp, b_name, x_scale, w_key):
    if not b_name:
        return None
    b = np.asarray(imp.m.initializers.get(b_name))
    if b_name not in imp.m.initializers or b.dtype != np.int32:
        imp.fail(f"bias {b_name!r} must be an int32 constant")
    w_scale = np.asarray(imp.fixed[w_key][1], np.float64).reshape(-1)
    key = b_name + "@" + (imp.node.name or imp.node.output[0])
    imp.fixed[key] = (b, x_scale * w_scale, np.zeros((), np.int32), 0, b.dtype)
    return key


def _finish(imp, fnode, y_scale_index):
    n = imp.node
    qtype = _act_qtype(imp, n.input[y_scale_index], n.input[y_scale_index + 1], "output")
    _set_qtype(imp, fnode.output, qtype, "output")


def _qlinear_conv(imp):
    n = imp.node
    x = _expect_input(imp, 0, 1)
    w_key = _qweight(imp, 3, out_axis=0)
    b_key = _qbias(imp, n.input[8] if len(n.input) > 8 else "", imp.fg.qtypes[x].scale, w_key)
    b = imp.const(b_key) if b_key else None
    fnode = imp.conv(x, imp.const(w_key), b, imp.attrs(), fixed_weights(imp, w_key, b_key, out_axis=0))
    _finish(imp, fnode, 6)


def _qlinear_matmul(imp):
    x = _expect_input(imp, 0, 1)
    w_key = _qweight(imp, 3, out_axis=1)
    fixed = fixed_weights(imp, w_key, None, out_axis=1)
    fnode = imp.dense(x, imp.const(w_key).T, None, fixed.replace(w_int=fixed.w_int.T))
    _finish(imp, fnode, 6)


def _qgemm(imp):
    n, a = imp.node, imp.attrs()
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0:
        imp.fail("QGemm with transA=1 or alpha other than 1 is not supported")
    if len(n.input) < 8 or not n.input[7]:
        imp.fail("QGemm without an output scale (float output) is not supported")
    x = _expect_input(imp, 0, 1)
    trans = a.get("transB", 0)
    w_key = _qweight(imp, 3, out_axis=0 if trans else 1)
    b_key = _qbias(imp, n.input[6], imp.fg.qtypes[x].scale, w_key)
    fixed = fixed_weights(imp, w_key, b_key, out_axis=0 if trans else 1)
    w = imp.const(w_key)
    if not trans:
        w, fixed = w.T, fixed.replace(w_int=fixed.w_int.T)
    fnode = imp.dense(x, w, imp.const(b_key) if b_key else None, fixed)
    _finish(imp, fnode, 7)


def _qlinear_add(imp):
    n = imp.node
    if imp.is_const(n.input[0]) or imp.is_const(n.input[3]):
        imp.fail("QLinearAdd with a constant input is not supported (only residual adds)")
    a = _expect_input(imp, 0, 1)
    b = _expect_input(imp, 3, 4)
    if imp.shape_of(a) != imp.shape_of(b):
        imp.fail(f"shapes {imp.shape_of(a)} and {imp.shape_of(b)} differ; broadcasting is not supported")
    fnode = imp.emit("Add", [a, b], imp.shape_of(a))
    _finish(imp, fnode, 6)


def _channels_first(imp):
    if imp.attrs().get("channels_last", 0):
        imp.fail("channels_last=1 is not supported")


def _qlinear_avgpool(imp):
    _channels_first(imp)
    _expect_input(imp, 0, 1)
    _finish(imp, imp._pool("AvgPool"), 3)


def _qlinear_gap(imp):
    _channels_first(imp)
    _expect_input(imp, 0, 1)
    _finish(imp, imp.op_GlobalAveragePool(), 3)


def _dynamic(imp):
    imp.fail("dynamically quantized models are not supported; quantize with "
             "onnxruntime.quantization.quantize_static, or give qfab the float model and calibration data")


HANDLERS = {
    "DequantizeLinear": _dequantize_linear, "QuantizeLinear": _quantize_linear,
    "QLinearConv": _qlinear_conv, "QLinearMatMul": _qlinear_matmul, "QGemm": _qgemm,
    "QLinearAdd": _qlinear_add, "QLinearAveragePool": _qlinear_avgpool,
    "QLinearGlobalAveragePool": _qlinear_gap,
    "DynamicQuantizeLinear": _dynamic, "MatMulInteger": _dynamic, "ConvInteger": _dynamic,
}
