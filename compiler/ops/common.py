"""What several operators share: window views, the requantization of a layer, and the checks of
docs/semantics.md that more than one node kind needs. A leaf of the compiler: it imports only the
IR, `intops` and the errors, so every operator module (and the modules that dispatch to them) can
import it."""

import dataclasses
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qfab.base.errors import QfabError, VerifyError

from .. import intops
from ..ir import Requant

__all__ = ["BIAS_BITS", "MULTIPLIER_BITS", "conv_output_hw", "fail", "check_int_array", "check_clamp",
           "check_requant", "check_rounding", "with_rounding", "x_max", "check_window", "pad", "windows", "exact_int", "requant_ratio",
           "clamp_bounds", "dyadic", "requant_of"]

BIAS_BITS = 32
MULTIPLIER_BITS = 16


# ---- shapes -----------------------------------------------------------------------------------
def conv_output_hw(hw, kernel, stride, padding):
    """Output height and width of a window operator (convolution or pool)."""
    (h, w), (kh, kw), (sh, sw), (top, left, bottom, right) = hw, kernel, stride, padding
    return (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1


# ---- verification -----------------------------------------------------------------------------
def fail(node, message):
    raise VerifyError(f"node {node.name!r} ({node.kind}): {message}")


def check_int_array(node, what, array, shape=None, lo=None, hi=None):
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.integer):
        fail(node, f"{what} must be an integer array, not {type(array).__name__}"
                   f"{'' if not isinstance(array, np.ndarray) else ' of ' + str(array.dtype)}")
    if shape is not None and tuple(array.shape) != tuple(shape):
        fail(node, f"{what} has shape {tuple(array.shape)}, expected {tuple(shape)}")
    if array.size and lo is not None and int(array.min()) < lo:
        fail(node, f"{what} has value {int(array.min())} below {lo}")
    if array.size and hi is not None and int(array.max()) > hi:
        fail(node, f"{what} has value {int(array.max())} above {hi}")


def check_clamp(node, lo, hi, out):
    q = out.qtype
    if not (isinstance(lo, (int, np.integer)) and isinstance(hi, (int, np.integer))):
        fail(node, f"clamp bounds must be integers, not {lo!r}, {hi!r}")
    if not q.qmin <= lo <= hi <= q.qmax:
        fail(node, f"clamp [{lo}, {hi}] must lie inside [{q.qmin}, {q.qmax}] of {q.describe()}")


def check_requant(graph, node, rq, channels, acc_bound, out):
    check_int_array(node, "requant m0", rq.m0, (channels,), 0, (1 << graph.m_bits) - 1)
    check_int_array(node, "requant shift", rq.shift, (channels,), 0, intops.MAX_SHIFT)
    check_clamp(node, rq.lo, rq.hi, out)
    bits = intops.acc_bits(acc_bound) + graph.m_bits
    if bits > intops.MAX_PRODUCT_BITS:
        fail(node, f"accumulator times multiplier needs {bits} bits, more than "
                   f"{intops.MAX_PRODUCT_BITS}; use fewer bits or a smaller m_bits")


def check_rounding(node):
    """A node's ``rounding`` is one of `intops.ROUNDING` (``half_up``, ``half_even``)."""
    if node.rounding not in intops.ROUNDING:
        fail(node, f"rounding must be one of {', '.join(intops.ROUNDING)}, not {node.rounding!r}")


def with_rounding(node, rounding):
    """``node`` with the rounding rule ``rounding`` (the `Op.with_rounding` of the ops that have one)."""
    return dataclasses.replace(node, rounding=rounding)


def x_max(t):
    """The largest magnitude of ``code - zero_point`` of tensor ``t``."""
    q = t.qtype
    return max(abs(q.qmin - q.zero_point), abs(q.qmax - q.zero_point))


def check_window(node, inp, kernel, stride, padding):
    if len(inp.shape) != 3:
        fail(node, f"input {inp.name!r} must be (H, W, C), not {inp.shape}")
    if len(kernel) != 2 or len(stride) != 2 or len(padding) != 4:
        fail(node, "kernel and stride need 2 values, padding 4 (top, left, bottom, right)")
    if min(kernel) < 1 or min(stride) < 1 or min(padding) < 0:
        fail(node, f"kernel {kernel}, stride {stride}, padding {padding} must be positive")
    if padding[0] >= kernel[0] or padding[2] >= kernel[0] or padding[1] >= kernel[1] or padding[3] >= kernel[1]:
        fail(node, f"padding {padding} must be smaller than the kernel {kernel}")
    ho, wo = conv_output_hw(inp.shape[:2], kernel, stride, padding)
    if ho < 1 or wo < 1:
        fail(node, f"kernel {kernel} does not fit the padded input {inp.shape[:2]}")
    return ho, wo


# ---- numerics (reference and float forward) ---------------------------------------------------
def exact_int(a):
    return np.rint(a).astype(np.int64)


def pad(x, padding, value):
    top, left, bottom, right = padding
    if not any(padding):
        return x
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def windows(x, kernel, stride, padding, pad_value):
    """``(B, HO, WO, KH, KW, C)`` views of the padded channels-last batch ``x``."""
    xp = pad(x, padding, pad_value)
    win = sliding_window_view(xp, kernel, axis=(1, 2))                 # (B, H', W', C, KH, KW)
    win = win[:, ::stride[0], ::stride[1]]
    return win.transpose(0, 1, 2, 4, 5, 3)


# ---- requantization of a layer (float scales -> dyadic pairs) ---------------------------------
def requant_ratio(*factors, divide_by):
    """``prod(factors) / divide_by`` in float32, in the order onnxruntime computes it."""
    r = np.float32(factors[0])
    for f in factors[1:]:
        r = np.float32(r * np.float32(f))
    return np.float32(r / np.float32(divide_by))


def clamp_bounds(act, qtype):
    """The output clamp ``(lo, hi)`` of a fused activation on a tensor of type ``qtype``."""
    lo, hi = qtype.qmin, qtype.qmax
    if act.kind in ("relu", "clip"):
        lo = max(lo, qtype.zero_point + (0 if act.kind == "relu" else int(np.ceil(act.lo / qtype.scale - 1e-5)))) \
            if act.real_lo != float("-inf") else lo
    if act.kind == "clip" and act.hi != float("inf"):
        hi = min(hi, qtype.zero_point + int(np.floor(act.hi / qtype.scale + 1e-5)))
    if lo > hi:
        lo = hi = min(max(lo, qtype.qmin), qtype.qmax)
    return int(lo), int(hi)


def dyadic(node, r, m_bits, what="requantization"):
    try:
        return intops.dyadic(float(r), m_bits)
    except ValueError as e:
        raise QfabError(f"node {node.name!r}: {what} multiplier: {e}") from None


def requant_of(fnode, ratios, out_q, m_bits):
    """The `Requant` of float node ``fnode`` for real multipliers ``ratios`` (one per channel)."""
    pairs = [dyadic(fnode, r, m_bits) for r in np.atleast_1d(ratios)]
    lo, hi = clamp_bounds(fnode.act, out_q)
    return Requant(m0=np.array([p[0] for p in pairs], np.int64),
                   shift=np.array([p[1] for p in pairs], np.int64), lo=lo, hi=hi)


def log2_ceil(n):
    return max(1, math.ceil(math.log2(max(2, n))))
