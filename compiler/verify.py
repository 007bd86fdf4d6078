"""The IR verifier: every rule of docs/semantics.md that a graph must keep.

Run after import, after every pass and after loading a file. Errors name the node or tensor.
"""

import math

import numpy as np

from . import intops
from qfab.base.errors import VerifyError
from .ir import Add, AvgPool, Conv2d, Dense, GlobalAvgPool, Graph, MaxPool, Reshape, _MatNode

__all__ = ["verify", "conv_output_hw", "pool_output_hw"]

BIAS_BITS = 32
MAX_DIM = 1 << 20
MAX_ELEMENTS = 1 << 31
MULTIPLIER_BITS = 16


def conv_output_hw(hw, kernel, stride, padding):
    (h, w), (kh, kw), (sh, sw), (top, left, bottom, right) = hw, kernel, stride, padding
    return (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1


pool_output_hw = conv_output_hw


def _fail(node, message):
    raise VerifyError(f"node {node.name!r} ({node.kind}): {message}")


def _check_int_array(node, what, array, shape=None, lo=None, hi=None):
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.integer):
        _fail(node, f"{what} must be an integer array, not {type(array).__name__}"
                    f"{'' if not isinstance(array, np.ndarray) else ' of ' + str(array.dtype)}")
    if shape is not None and tuple(array.shape) != tuple(shape):
        _fail(node, f"{what} has shape {tuple(array.shape)}, expected {tuple(shape)}")
    if array.size and lo is not None and int(array.min()) < lo:
        _fail(node, f"{what} has value {int(array.min())} below {lo}")
    if array.size and hi is not None and int(array.max()) > hi:
        _fail(node, f"{what} has value {int(array.max())} above {hi}")


def _check_tensor(graph, name):
    t = graph.tensors.get(name)
    if t is None:
        raise VerifyError(f"tensor {name!r} is used but not declared")
    if t.name != name:
        raise VerifyError(f"tensor {name!r} is declared under the name {t.name!r}")
    if not t.shape or not all(isinstance(d, (int, np.integer)) and 0 < d <= MAX_DIM for d in t.shape):
        raise VerifyError(f"tensor {name!r} has shape {t.shape!r}: dimensions must be positive integers (at most {MAX_DIM})")
    if np.prod([int(d) for d in t.shape], dtype=object) > MAX_ELEMENTS:
        raise VerifyError(f"tensor {name!r} has shape {t.shape!r}: more than {MAX_ELEMENTS} elements")
    q = t.qtype
    if not isinstance(q.bits, (int, np.integer)) or not 1 <= q.bits <= 8:
        raise VerifyError(f"tensor {name!r}: bits must be 1 to 8, not {q.bits!r}")
    if not (isinstance(q.scale, float) and math.isfinite(q.scale) and q.scale > 0):
        raise VerifyError(f"tensor {name!r}: scale must be a positive finite float, not {q.scale!r}")
    if not q.qmin <= q.zero_point <= q.qmax:
        raise VerifyError(f"tensor {name!r}: zero point {q.zero_point} outside the code range "
                          f"[{q.qmin}, {q.qmax}] of {q.describe()}")
    return t


def _check_clamp(node, lo, hi, out):
    q = out.qtype
    if not (isinstance(lo, (int, np.integer)) and isinstance(hi, (int, np.integer))):
        _fail(node, f"clamp bounds must be integers, not {lo!r}, {hi!r}")
    if not q.qmin <= lo <= hi <= q.qmax:
        _fail(node, f"clamp [{lo}, {hi}] must lie inside [{q.qmin}, {q.qmax}] of {q.describe()}")


def _check_requant(graph, node, rq, channels, acc_bound, out):
    _check_int_array(node, "requant m0", rq.m0, (channels,), 0, (1 << graph.m_bits) - 1)
    _check_int_array(node, "requant shift", rq.shift, (channels,), 0, intops.MAX_SHIFT)
    _check_clamp(node, rq.lo, rq.hi, out)
    bits = intops.acc_bits(acc_bound) + graph.m_bits
    if bits > intops.MAX_PRODUCT_BITS:
        _fail(node, f"accumulator times multiplier needs {bits} bits, more than "
                    f"{intops.MAX_PRODUCT_BITS}; use fewer bits or a smaller m_bits")


def _x_max(t):
    q = t.qtype
    return max(abs(q.qmin - q.zero_point), abs(q.qmax - q.zero_point))


def _check_matnode(graph, node, inp, out):
    w, wt = node.weights, node.w_type
    if not isinstance(w, np.ndarray) or w.ndim != (3 if isinstance(node, Dense) else 5):
        _fail(node, f"weights must be a {3 if isinstance(node, Dense) else 5}-D array")
    if w.shape[0] < 1:
        _fail(node, "weights need at least one point")
    if not isinstance(wt.bits, (int, np.integer)) or not 1 <= wt.bits <= 8:
        _fail(node, f"weight bits must be 1 to 8, not {wt.bits}")
    if wt.bipolar and wt.bits != 1:
        _fail(node, f"bipolar weights have 1 bit, not {wt.bits}")
    _check_int_array(node, "weights", w, None, wt.qmin, wt.qmax)
    if wt.bipolar and np.any(w == 0):
        _fail(node, "bipolar weights must be -1 or +1, found 0")
    p, c = w.shape[0], w.shape[1]
    mlim = 1 << (MULTIPLIER_BITS - 1)
    _check_int_array(node, "point multipliers", node.multipliers, (p, c), -mlim, mlim - 1)
    _check_int_array(node, "bias", node.bias, (c,), -(1 << (BIAS_BITS - 1)), (1 << (BIAS_BITS - 1)) - 1)
    scales = np.asarray(wt.scales, dtype=np.float64)
    if scales.shape != (c,) or not np.all(np.isfinite(scales)) or not np.all(scales > 0):
        _fail(node, f"weight scales must be {c} positive finite floats")
    bound = intops.acc_bound(node.fan_in, wt.max_abs, _x_max(inp),
                             int(np.abs(node.bias).max(initial=0)), p,
                             int(np.abs(node.multipliers).max(initial=0)))
    _check_requant(graph, node, node.requant, c, bound, out)


def _check_dense(graph, node, inp, out):
    _check_matnode(graph, node, inp, out)
    _, n, k = node.weights.shape
    if inp.shape != (k,):
        _fail(node, f"input {inp.name!r} has shape {inp.shape}, weights expect ({k},)")
    if out.shape != (n,):
        _fail(node, f"output {out.name!r} has shape {out.shape}, expected ({n},)")


def _check_window(node, inp, kernel, stride, padding):
    if len(inp.shape) != 3:
        _fail(node, f"input {inp.name!r} must be (H, W, C), not {inp.shape}")
    if len(kernel) != 2 or len(stride) != 2 or len(padding) != 4:
        _fail(node, "kernel and stride need 2 values, padding 4 (top, left, bottom, right)")
    if min(kernel) < 1 or min(stride) < 1 or min(padding) < 0:
        _fail(node, f"kernel {kernel}, stride {stride}, padding {padding} must be positive")
    if padding[0] >= kernel[0] or padding[2] >= kernel[0] or padding[1] >= kernel[1] or padding[3] >= kernel[1]:
        _fail(node, f"padding {padding} must be smaller than the kernel {kernel}")
    ho, wo = conv_output_hw(inp.shape[:2], kernel, stride, padding)
    if ho < 1 or wo < 1:
        _fail(node, f"kernel {kernel} does not fit the padded input {inp.shape[:2]}")
    return ho, wo


def _check_conv(graph, node, inp, out):
    _check_matnode(graph, node, inp, out)
    _, cout, kh, kw, cg = node.weights.shape
    ho, wo = _check_window(node, inp, (kh, kw), node.stride, node.padding)
    g = node.groups
    if not isinstance(g, int) or g < 1 or cout % g or inp.shape[2] != g * cg:
        _fail(node, f"groups={g} does not fit input channels {inp.shape[2]}, "
                    f"output channels {cout} and weight shape {node.weights.shape[1:]}")
    if out.shape != (ho, wo, cout):
        _fail(node, f"output {out.name!r} has shape {out.shape}, expected {(ho, wo, cout)}")


def _check_maxpool(graph, node, inp, out):
    ho, wo = _check_window(node, inp, node.kernel, node.stride, node.padding)
    if out.shape != (ho, wo, inp.shape[2]):
        _fail(node, f"output {out.name!r} has shape {out.shape}, expected {(ho, wo, inp.shape[2])}")
    if out.qtype != inp.qtype:
        _fail(node, "MaxPool output type must equal its input type")
    _check_clamp(node, out.qtype.qmin if node.lo is None else node.lo,
                 out.qtype.qmax if node.hi is None else node.hi, out)


def _check_avgpool(graph, node, inp, out):
    ho, wo = _check_window(node, inp, node.kernel, node.stride, node.padding)
    c = inp.shape[2]
    if out.shape != (ho, wo, c):
        _fail(node, f"output {out.name!r} has shape {out.shape}, expected {(ho, wo, c)}")
    k = node.kernel[0] * node.kernel[1]
    _check_requant(graph, node, node.requant, 1, k * _x_max(inp), out)


def _check_gap(graph, node, inp, out):
    if len(inp.shape) != 3:
        _fail(node, f"input {inp.name!r} must be (H, W, C), not {inp.shape}")
    h, w, c = inp.shape
    if out.shape != (1, 1, c):
        _fail(node, f"output {out.name!r} has shape {out.shape}, expected {(1, 1, c)}")
    _check_requant(graph, node, node.requant, 1, h * w * _x_max(inp), out)


def _check_add(graph, node, a, b, out):
    if not (a.shape == b.shape == out.shape):
        _fail(node, f"shapes differ: a {a.shape}, b {b.shape}, output {out.shape}")
    lim = 1 << graph.m_bits
    for what, value in (("m_a", node.m_a), ("m_b", node.m_b)):
        if not isinstance(value, (int, np.integer)) or not 0 <= value < lim:
            _fail(node, f"{what} must be an integer in [0, {lim}), not {value!r}")
    if not isinstance(node.shift, (int, np.integer)) or not 0 <= node.shift <= intops.MAX_SHIFT:
        _fail(node, f"shift must be in 0..{intops.MAX_SHIFT}, not {node.shift!r}")
    bound = node.m_a * _x_max(a) + node.m_b * _x_max(b)
    if intops.acc_bits(bound) > intops.MAX_PRODUCT_BITS:
        _fail(node, "scaled sum does not fit 62 bits")
    _check_clamp(node, node.lo, node.hi, out)


def _check_reshape(graph, node, inp, out):
    if inp.size != out.size:
        _fail(node, f"cannot reshape {inp.shape} ({inp.size} elements) to {out.shape} ({out.size})")
    if inp.qtype != out.qtype:
        _fail(node, "Reshape must keep the type")


_CHECKS = {
    Dense: _check_dense, Conv2d: _check_conv, MaxPool: _check_maxpool, AvgPool: _check_avgpool,
    GlobalAvgPool: _check_gap, Reshape: _check_reshape,
}


def verify(graph):
    """Check ``graph``; return it unchanged, or raise `VerifyError` naming what is wrong."""
    if not isinstance(graph, Graph):
        raise VerifyError(f"expected a Graph, not {type(graph).__name__}")
    if not isinstance(graph.m_bits, int) or not 2 <= graph.m_bits <= 32:
        raise VerifyError(f"m_bits must be an integer from 2 to 32, not {graph.m_bits!r}")
    if not graph.inputs or not graph.outputs:
        raise VerifyError("a graph needs at least one input and one output")
    defined = set()
    for name in graph.inputs:
        _check_tensor(graph, name)
        defined.add(name)
    names = set()
    for node in graph.nodes:
        if node.name in names:
            _fail(node, "node name used twice")
        names.add(node.name)
        for name in node.inputs:
            if name not in defined:
                _fail(node, f"input {name!r} is not produced by an earlier node or a graph input")
        if node.output in defined:
            _fail(node, f"output {node.output!r} is produced twice")
        tensors = [_check_tensor(graph, n) for n in (*node.inputs, node.output)]
        if isinstance(node, Add):
            _check_add(graph, node, *tensors)
        elif isinstance(node, _MatNode) or type(node) in _CHECKS:
            _CHECKS[type(node)](graph, node, *tensors)
        else:
            raise VerifyError(f"node {node.name!r}: unknown kind {type(node).__name__}")
        defined.add(node.output)
    for name in graph.outputs:
        if name not in defined:
            raise VerifyError(f"graph output {name!r} is never produced")
    return graph
