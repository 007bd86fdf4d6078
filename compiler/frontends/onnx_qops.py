"""The quantized ONNX operators: QDQ (QuantizeLinear / DequantizeLinear around float operators)
and QOperator (QLinearConv, QLinearMatMul, QGemm, QLinearAdd, QLinear(Global)AveragePool), as
``onnxruntime.quantization.quantize_static`` writes them.

They attach *fixed* quantization to the float graph that `onnx_import.Importer` builds: integer
weights and biases to layers, types to tensors. Handlers are plain functions of the importer.
"""

import numpy as np

from qfab.base.errors import UnsupportedModelError
from qfab.base.ints import acc_bits

from ..fgraph import Act, FixedWeights
from ..ir import QType
from ..ops import op_for

__all__ = ["HANDLERS", "fixed_weights", "weight_bits", "is_codes", "clip_codes", "pool_rounding", "ROUNDING_PROP"]


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


def weight_bits(w):
    """``(bits, signed)`` of the narrowest signed type holding the integer weights ``w`` (``(1, True)``,
    bipolar, when every weight is -1 or +1)."""
    if w.size and np.all(np.abs(w) == 1):
        return 1, True
    lo, hi = (int(w.min()), int(w.max())) if w.size else (0, 0)
    return max(2, ints_width(lo, hi, True)), True


def ints_width(lo, hi, signed):
    """Bits of the narrowest type (``signed`` or not) whose code range holds ``[lo, hi]``."""
    if signed:
        return 1 + max(-lo - 1, hi, 0).bit_length()
    return max(1, max(hi, 0).bit_length())


def fixed_weights(imp, w_name, b_name, out_axis):
    """`FixedWeights` in the ONNX layout of ``w_name`` if it is a dequantized constant, else None.

    The weight width is read from the codes themselves (minus the zero point): codes in
    ``[-8, 7]`` are ``i4`` whatever their storage type (docs/models.md).
    """
    if w_name not in imp.fixed:
        return None
    q, scale, zp, axis, dtype = imp.fixed[w_name]
    _int_kind(imp, dtype, f"weight {w_name!r}")
    channels = q.shape[out_axis]
    scale, zp = np.asarray(scale, np.float64).reshape(-1), np.asarray(zp, np.int64).reshape(-1)
    if scale.size != 1 and (scale.size != channels or axis % q.ndim != out_axis):
        imp.fail(f"weight {w_name!r} is quantized along axis {axis}, not per output channel")
    shape = [1] * q.ndim
    shape[out_axis] = -1
    zps = zp.reshape(shape) if zp.size > 1 else zp.reshape(())
    w = q.astype(np.int64) - zps
    bits, signed = weight_bits(w)
    if w_name in imp.code_range and not (bits == 1 and signed):       # a QCDQ Clip: the width it declares
        lo, hi = imp.code_range[w_name]
        bits = max(bits, ints_width(lo - int(zp.max()), hi - int(zp.min()), True))
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


def _axis(imp, q, what):
    a = imp.attrs()
    if a.get("block_size", 0):
        imp.fail("blocked quantization (block_size) is not supported")
    axis = int(a.get("axis", 1))
    return axis if axis >= 0 else axis + q.ndim


def _per_axis(v, q, axis):
    v = np.asarray(v)
    if v.size == 1 or q.ndim == 0:
        return v.reshape(())
    shape = [1] * q.ndim
    shape[axis] = -1
    return v.reshape(shape)


def _dequantize_linear(imp):
    n = imp.node
    x = n.input[0]
    if x in imp.m.initializers or x in imp.qconst:
        scale = _scale(imp, n.input[1], "DequantizeLinear")
        zp = _zp(imp, n.input[2] if len(n.input) > 2 else "", "DequantizeLinear")
        q = imp.qconst[x][0] if x in imp.qconst else np.asarray(imp.m.initializers[x])
        if q.dtype.kind not in "iu":
            imp.fail(f"constant {x!r} has type {q.dtype}, not an integer type")
        imp.fixed[n.output[0]] = (q, scale, zp, _axis(imp, q, "DequantizeLinear"), q.dtype)
        if x in imp.code_range:
            imp.code_range[n.output[0]] = imp.code_range[x]
        return
    t = imp.tensor(x)
    qtype = _act_qtype(imp, n.input[1], n.input[2] if len(n.input) > 2 else "", "DequantizeLinear")
    if x in imp.codes:
        # the codes of a QuantizeLinear (maybe narrowed by a Clip): same scale and zero point
        coded = imp.codes[x]
        if (coded.scale, coded.zero_point) != (qtype.scale, qtype.zero_point):
            imp.fail(f"DequantizeLinear reads {x!r} with scale {qtype.scale} and zero point {qtype.zero_point}, "
                     f"but it was quantized with scale {coded.scale} and zero point {coded.zero_point}; "
                     "qfab would need a requantization node there")
        qtype = coded
    _set_qtype(imp, t, qtype, "tensor")
    imp.alias(x, n.output[0])


def _quantize_linear(imp):
    n = imp.node
    x = n.input[0]
    if x in imp.m.initializers and x not in imp.fixed:
        _quantize_constant(imp)
        return
    if imp.is_const(x):
        imp.fail("QuantizeLinear of a dequantized constant should be folded before import")
    t = imp.tensor(x)
    qtype = _act_qtype(imp, n.input[1], n.input[2] if len(n.input) > 2 else "", "QuantizeLinear")
    _set_qtype(imp, t, qtype, "tensor")
    imp.alias(x, n.output[0])
    imp.codes[n.output[0]] = qtype


def _quantize_constant(imp):
    """QuantizeLinear of a float initializer (how Brevitas writes weights): its integer codes,
    computed as onnxruntime does (float32 division, round half to even, saturate)."""
    n = imp.node
    w = np.asarray(imp.m.initializers[n.input[0]])
    if w.dtype.kind != "f":
        imp.fail(f"QuantizeLinear input {n.input[0]!r} has type {w.dtype}, not a float type")
    scale = _scale(imp, n.input[1], "QuantizeLinear")
    zp = _zp(imp, n.input[2] if len(n.input) > 2 else "", "QuantizeLinear")
    if zp.dtype.kind not in "iu" or zp.dtype.itemsize > 1:
        imp.fail(f"QuantizeLinear output type {zp.dtype} is not an 8-bit integer type")
    axis = _axis(imp, w, "QuantizeLinear")
    info = np.iinfo(zp.dtype)
    x = w.astype(np.float32) / _per_axis(scale, w, axis).astype(np.float32)
    q = np.clip(np.rint(x).astype(np.int64) + _per_axis(zp, w, axis).astype(np.int64), info.min, info.max)
    imp.qconst[n.output[0]] = (q.astype(zp.dtype), scale, zp, axis, zp.dtype)


def is_codes(imp, name):
    """Whether ONNX value ``name`` holds integer codes (a QuantizeLinear's output, a Clip of one,
    an integer initializer)."""
    if name in imp.m.initializers:
        return np.asarray(imp.m.initializers[name]).dtype.kind in "iu"
    return name in imp.codes or name in imp.qconst


def clip_codes(imp, lo, hi):
    """A Clip between QuantizeLinear and DequantizeLinear (QCDQ): it narrows the code range.

    An activation takes the narrowest type that holds ``[lo, hi]`` and its zero point (``[0, 15]``
    is u4, ``[-8, 7]`` is i4); a range that is not a whole type's (``[-7, 7]``, narrow range) also
    becomes the output clamp of the node that makes the tensor. A constant (weights) is clamped.
    """
    n = imp.node
    x = n.input[0]
    lo = -(1 << 62) if lo == float("-inf") else int(np.ceil(lo))
    hi = 1 << 62 if hi == float("inf") else int(np.floor(hi))
    if lo > hi:
        imp.fail(f"Clip range [{lo}, {hi}] is empty")
    if x in imp.m.initializers and x not in imp.qconst:
        q = np.asarray(imp.m.initializers[x])
        if q.dtype.kind not in "iu":
            imp.fail(f"Clip of the float constant {x!r} should be folded before import")
        imp.qconst[x] = (q, None, None, None, q.dtype)
    if x in imp.qconst:
        q, scale, zp, axis, dtype = imp.qconst[x]
        imp.qconst[n.output[0]] = (np.clip(q.astype(np.int64), lo, hi).astype(dtype), scale, zp, axis, dtype)
        imp.code_range[n.output[0]] = (max(lo, imp.code_range.get(x, (lo, hi))[0]),
                                       min(hi, imp.code_range.get(x, (lo, hi))[1]))
        return
    old = imp.codes[x]
    lo, hi = max(int(lo), old.qmin), min(int(hi), old.qmax)
    zp = old.zero_point
    choices = [(ints_width(min(lo, zp), max(hi, zp), True), True)]
    if min(lo, zp) >= 0:
        choices.append((ints_width(0, max(hi, zp), False), False))
    bits, signed = min(choices, key=lambda c: (c[0], c[1]))
    qtype = QType(bits=bits, signed=signed, scale=old.scale, zero_point=zp)
    t = imp.tensor(x)
    if (lo, hi) != (qtype.qmin, qtype.qmax):
        prod = imp.fg.producer(t)
        if prod is None:
            imp.fail(f"Clip [{lo}, {hi}] of the graph input's codes is narrower than the {qtype.describe()} "
                     "range; qfab quantizes the input to a whole type's range")
        real = Act("clip", (lo - zp) * old.scale, (hi - zp) * old.scale)
        imp.replace_node(prod, prod.replace(act=prod.act.then(real)))
    prev = imp.fg.qtypes.get(t)
    if prev is not None and prev not in (old, qtype):
        imp.fail(f"tensor {t!r} is quantized twice with different parameters ({prev} and {qtype})")
    imp.fg.qtypes[t] = qtype
    imp.alias(x, n.output[0])
    imp.codes[n.output[0]] = qtype


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
    consts = [imp.is_const(n.input[0]), imp.is_const(n.input[3])]
    if all(consts):
        imp.fail("QLinearAdd of two constants should be folded before import")
    if any(consts):                           # a bias add: the activation plus an integer constant
        xi, ci = (3, 0) if consts[0] else (0, 3)
        _expect_input(imp, xi, xi + 1)
        q = np.asarray(imp.m.np_const(n, n.input[ci], "constant input"))
        _int_kind(imp, q.dtype, f"constant input {n.input[ci]!r}")
        scale, zp = _scale(imp, n.input[ci + 1], "constant"), _zp(imp, n.input[ci + 2], "constant")
        if scale.size != 1 or zp.size != 1:
            imp.fail("the constant input has a per-channel scale or zero point; QLinearAdd takes one per tensor")
        fnode = imp.bias_add(n.input[xi], q, float(scale.reshape(())), int(zp.reshape(())))
        _finish(imp, fnode, 6)
        return
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


WIDE_OUTPUT_BITS = 32


def type_float_outputs(imp):
    """A quantized model whose last layer has a float output (Brevitas's QuantLinear default, a
    float Gemm after DQ): the graph output is the layer's integer accumulator, a wide signed type
    with scale ``s_in * s_w`` (``M0 / 2**n = 1``), so that its dequantized value is the float
    output of onnxruntime within float32 rounding. Per-channel weight scales: the output step is
    the smallest channel's ``s_in * s_w`` divided by the largest power of two that keeps the codes
    within 32 bits, and every channel is requantized to it (dyadic multipliers ``>= 1``)."""
    fg = imp.fg
    if not fg.qtypes:
        return
    for t in fg.outputs:
        if t in fg.qtypes:
            continue
        prod = fg.producer(t)
        src = prod.inputs[0] if prod is not None else None
        while src is not None and src not in fg.qtypes and fg.producer(src) is not None \
                and op_for(fg.producer(src).kind).type_preserving:
            src = fg.producer(src).inputs[0]
        if prod is None or prod.fixed is None or src not in fg.qtypes:
            continue
        if prod.act.kind != "none":
            imp.node = None
            raise UnsupportedModelError(f"graph output {t!r}: an activation after the float last layer "
                                        f"{prod.name!r} is not supported (quantize its output)")
        x = fg.qtypes[src]
        fx = prod.fixed
        if fx.multipliers is not None:
            continue
        scales = np.asarray(fx.scales, np.float64)
        w = np.asarray(fx.w_int, np.int64).reshape(len(scales), -1)
        x_max = max(abs(x.qmin - x.zero_point), abs(x.qmax - x.zero_point))
        b = fx.b_int if fx.b_int is not None else np.rint(prod.bias / (x.scale * scales))
        bounds = np.abs(np.asarray(b, np.float64)) + np.abs(w).sum(axis=1) * x_max      # per channel
        s_w = scales.min()
        bits = acc_bits(int(np.ceil((bounds * scales / s_w).max(initial=0))))
        # per-channel scales: refine the output step by 2^-k (k as large as 32 bits allow), so
        # that rounding each channel to it costs no more than float32 rounding does
        k = 0 if np.all(scales == s_w) else max(0, WIDE_OUTPUT_BITS - bits)
        s_out = float(np.float32(np.float32(x.scale) * np.float32(s_w)) * 2.0 ** -k)
        bits += k
        if bits > WIDE_OUTPUT_BITS:
            raise UnsupportedModelError(f"graph output {t!r}: the accumulator of the float last layer "
                                        f"{prod.name!r} needs {bits} bits, more than {WIDE_OUTPUT_BITS}")
        fg.qtypes[t] = QType(bits=bits, signed=True, scale=s_out, zero_point=0)
        imp.notes.append(f"graph output {t!r} is not quantized in the model: qfab outputs the integer "
                         f"accumulator of {prod.name!r} (i{bits}, scale s_in * s_w = {s_out:.6g})")


ROUNDING_PROP = "qfab.pool_rounding"


def pool_rounding(imp):
    """The rounding rule of the model's average pools: onnxruntime runs QDQ and QOperator pools in
    float and rounds half to even; a model qfab wrote says its own rule (``qfab.pool_rounding``)."""
    props = {p.key: p.value for p in imp.m.model.metadata_props}
    if props.get(ROUNDING_PROP) in ("half_up", "half_even"):
        return props[ROUNDING_PROP]
    return "half_even" if imp.fg.qtypes else "half_up"


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
