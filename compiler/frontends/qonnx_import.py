"""QONNX: the ``Quant``, ``BipolarQuant`` and ``Trunc`` operators (domain ``qonnx.custom_op.general``,
formerly ``finn.custom_op.general``) that Brevitas, FINN and hls4ml use to exchange networks of any
bit width, read into the float graph with their real widths.

``Quant(x, scale, zero_point, bit_width)`` means
``y = (clamp(round_half_to_even(x / scale + zero_point), qmin, qmax) - zero_point) * scale`` with
``[qmin, qmax]`` the range of ``bit_width`` bits (``signed``, ``narrow``). On a constant (a weight,
also one that Brevitas lists as a graph input) it becomes the layer's integer weights with
``bit_width`` bits; on an activation it becomes the tensor's `QType` (``bit_width`` bits, the
scale and zero point). ``BipolarQuant`` on a weight is a bipolar weight (codes +-1, the IR's 1-bit bipolar type).
The operators are read directly: the ``qonnx`` package is not needed to import (the tests use its
executor, `qonnx.core.onnx_exec.execute_onnx`, as the oracle).
"""

import numpy as np

from ..ir import QType

__all__ = ["DOMAINS", "handler"]

DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas")


def _scalar(imp, name, what):
    value = imp.m.initializers.get(name)
    if value is None:
        imp.fail(f"{what} {name!r} must be a constant")
    return np.asarray(value, np.float64)


def _code_range(bits, signed, narrow):
    if signed:
        return -(1 << (bits - 1)) + (1 if narrow else 0), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1 - (1 if narrow else 0)


def _bits(imp, name):
    b = _scalar(imp, name, "bit width")
    if b.size != 1 or b.reshape(()) != np.round(b.reshape(())) or not 1 <= b.reshape(()) <= 8:
        imp.fail(f"bit width {b.reshape(-1).tolist()} is not supported; qfab supports integer widths 1 to 8")
    return int(b.reshape(()))


def _rounding(imp):
    mode = imp.attrs().get("rounding_mode", b"ROUND")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode.upper() != "ROUND":
        imp.fail(f"rounding_mode={mode} is not supported; qfab reads Quant with ROUND (half to even)")


def _axis(scale, q):
    """The channel axis of a per-channel scale (broadcast against ``q``), 0 for one scale, else -1."""
    if scale.size == 1:
        return 0
    shape = (1,) * (q.ndim - scale.ndim) + scale.shape
    big = [i for i, d in enumerate(shape) if d > 1]
    return big[0] if len(big) == 1 and shape[big[0]] == q.shape[big[0]] else -1


def _weight(imp, x, scale, zp, bits, signed, narrow):
    """A quantized constant: integer codes registered like a DequantizeLinear of a constant."""
    n = imp.node
    w = np.asarray(imp.m.initializers[x], np.float64)
    lo, hi = _code_range(bits, signed, narrow)
    q = np.clip(np.round(w / scale + zp), lo, hi).astype(np.int64)
    axis = _axis(scale, q)
    if axis < 0 or zp.size != 1:
        imp.fail(f"weight {x!r}: the scale of shape {scale.shape} is not per tensor or per output channel")
    dtype = np.int8 if signed else np.uint8
    imp.fixed[n.output[0]] = (q.astype(dtype), scale.reshape(-1), np.asarray(zp.reshape(()), dtype), axis, dtype)
    if not np.any(zp):          # with a zero point, onnx_qops.fixed_weights finds the width of q - zp
        imp.weight_types[n.output[0]] = (bits, bool(signed))


def _activation(imp, x, scale, zp, bits, signed, narrow):
    n = imp.node
    if scale.size != 1 or zp.size != 1:
        imp.fail("activations need one scale and zero point per tensor")
    if narrow:
        imp.fail("narrow_range=1 on an activation is not supported (qfab's types use the full code range)")
    z = float(zp.reshape(()))
    if z != round(z):
        imp.fail(f"zero point {z} is not an integer")
    t = imp.tensor(x)
    qtype = QType(bits=bits, signed=bool(signed), scale=float(scale.reshape(())), zero_point=int(z))
    old = imp.fg.qtypes.get(t)
    if old is not None and old != qtype:
        imp.fail(f"tensor {x!r} is quantized twice with different parameters ({old} and {qtype})")
    imp.fg.qtypes[t] = qtype
    imp.alias(x, n.output[0])


def _quant(imp):
    n, a = imp.node, imp.attrs()
    _rounding(imp)
    scale = _scalar(imp, n.input[1], "scale")
    zp = _scalar(imp, n.input[2], "zero point")
    if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        imp.fail("scale must be positive and finite")
    bits = _bits(imp, n.input[3])
    signed, narrow = int(a.get("signed", 1)), int(a.get("narrow", 0))
    if n.input[0] in imp.m.initializers:
        _weight(imp, n.input[0], scale, zp, bits, signed, narrow)
    else:
        _activation(imp, n.input[0], scale, zp, bits, signed, narrow)


def _bipolar_quant(imp):
    n = imp.node
    scale = _scalar(imp, n.input[1], "scale")
    if n.input[0] not in imp.m.initializers:
        imp.fail("BipolarQuant on an activation (values +-scale) has no qfab type; qfab reads it on weights")
    w = np.asarray(imp.m.initializers[n.input[0]], np.float64)
    q = np.where(w >= 0, 1, -1).astype(np.int8)
    axis = _axis(scale, q)
    if axis < 0:
        imp.fail(f"the scale of shape {scale.shape} is not per tensor or per output channel")
    imp.fixed[n.output[0]] = (q, scale.reshape(-1), np.zeros((), np.int8), axis, np.int8)
    imp.weight_types[n.output[0]] = (1, True)         # the IR's bipolar weight type


def _trunc(imp):
    imp.fail("Trunc (the floor-rounding shift Brevitas writes after an average pool) is not supported: "
             "qfab rounds half up (docs/semantics.md); use a Quant after the pool instead")


HANDLERS = {"Quant": _quant, "BipolarQuant": _bipolar_quant, "Trunc": _trunc}


def handler(imp, node):
    """The handler of QONNX ``node`` (a function of the importer)."""
    if node.op_type not in HANDLERS:
        imp.fail(f"QONNX operator {node.op_type!r} is not supported (supported: {', '.join(HANDLERS)})")
    return HANDLERS[node.op_type]
