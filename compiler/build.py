"""Float graph + quantization choices -> IR `Graph`.

Shared by post-training quantization (which chooses the types) and the QDQ/QOperator import
(which reads them from the model). Every real multiplier becomes a dyadic pair here and nowhere
else; the arithmetic follows docs/semantics.md.
"""

import numpy as np

from . import intops
from qfab.base.errors import QfabError
from .ir import (Add, AvgPool, Conv2d, Dense, GlobalAvgPool, Graph, MaxPool, QType, Requant,
                 Reshape, Tensor, WeightType)
from .verify import verify

__all__ = ["build_graph", "requant_ratio", "type_preserving", "clamp_bounds"]

TYPE_PRESERVING = ("MaxPool", "Reshape")
BIAS_LIMIT = (1 << 31) - 1


def type_preserving(kind):
    return kind in TYPE_PRESERVING


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


def _dyadic(node, r, m_bits, what="requantization"):
    try:
        return intops.dyadic(float(r), m_bits)
    except ValueError as e:
        raise QfabError(f"node {node.name!r}: {what} multiplier: {e}") from None


def _requant(node, ratios, out_q, m_bits):
    pairs = [_dyadic(node, r, m_bits) for r in np.atleast_1d(ratios)]
    lo, hi = clamp_bounds(node.act, out_q)
    return Requant(m0=np.array([p[0] for p in pairs], np.int64),
                   shift=np.array([p[1] for p in pairs], np.int64), lo=lo, hi=hi)


def _bias(node, fixed, s_in):
    if fixed.b_int is not None:
        return fixed.b_int.astype(np.int64)
    b = np.rint(node.bias / (s_in * fixed.scales))
    if np.any(np.abs(b) > BIAS_LIMIT):
        raise QfabError(f"node {node.name!r}: bias does not fit 32 bits at scale s_in * s_w; "
                        "the input or weight scale is too small for this bias")
    return b.astype(np.int64)


def _weighted(node, fixed, tin, tout, m_bits):
    if fixed is None:
        raise QfabError(f"node {node.name!r} ({node.kind}) has no quantized weights")
    s_in, s_out = tin.qtype.scale, tout.qtype.scale
    ratios = [requant_ratio(s_in, s_w, divide_by=s_out) for s_w in fixed.scales]
    if fixed.multipliers is None:
        w = fixed.w_int.astype(np.int64)[None]
        multipliers = np.ones((1, w.shape[1]), np.int64)
    else:
        w = fixed.w_int.astype(np.int64)
        multipliers = np.asarray(fixed.multipliers, np.int64)
    bipolar = fixed.bits == 1 and bool(np.all(np.abs(w[multipliers != 0]) == 1))
    wt = WeightType(bits=fixed.bits, signed=fixed.signed or bipolar, scales=np.asarray(fixed.scales, np.float64),
                    bipolar=bipolar)
    common = dict(name=node.name, input=node.inputs[0], output=node.output, weights=w,
                  multipliers=multipliers, bias=_bias(node, fixed, s_in),
                  w_type=wt, requant=_requant(node, ratios, tout.qtype, m_bits))
    if node.kind == "Dense":
        return Dense(**common)
    return Conv2d(**common, stride=tuple(node.stride), padding=tuple(node.padding), groups=node.groups)


def _node(node, tensors, fixed, m_bits):
    tin = tensors[node.inputs[0]]
    tout = tensors[node.output]
    if node.kind in ("Dense", "Conv2d"):
        return _weighted(node, fixed, tin, tout, m_bits)
    if node.kind == "MaxPool":
        lo, hi = clamp_bounds(node.act, tout.qtype)
        return MaxPool(name=node.name, input=node.inputs[0], output=node.output, kernel=tuple(node.kernel),
                       stride=tuple(node.stride), padding=tuple(node.padding), lo=lo, hi=hi)
    if node.kind == "AvgPool":
        k = node.kernel[0] * node.kernel[1]
        r = requant_ratio(tin.qtype.scale, divide_by=np.float32(tout.qtype.scale) * k)
        return AvgPool(name=node.name, input=node.inputs[0], output=node.output, kernel=tuple(node.kernel),
                       stride=tuple(node.stride), padding=tuple(node.padding),
                       requant=_requant(node, r, tout.qtype, m_bits))
    if node.kind == "GlobalAvgPool":
        h, w, _ = tin.shape
        r = requant_ratio(tin.qtype.scale, divide_by=np.float32(tout.qtype.scale) * (h * w))
        return GlobalAvgPool(name=node.name, input=node.inputs[0], output=node.output,
                             requant=_requant(node, r, tout.qtype, m_bits))
    if node.kind == "Add":
        ta, tb = tensors[node.inputs[0]], tensors[node.inputs[1]]
        (ma, na), (mb, nb) = (_dyadic(node, requant_ratio(t.qtype.scale, divide_by=tout.qtype.scale), m_bits)
                              for t in (ta, tb))
        n = min(na, nb)
        ra, rb = (float(requant_ratio(t.qtype.scale, divide_by=tout.qtype.scale)) for t in (ta, tb))
        lo, hi = clamp_bounds(node.act, tout.qtype)
        return Add(name=node.name, a=node.inputs[0], b=node.inputs[1], output=node.output,
                   m_a=int(round(ra * 2 ** n)), m_b=int(round(rb * 2 ** n)), shift=n, lo=lo, hi=hi)
    if node.kind == "Reshape":
        if node.act.kind != "none":
            raise QfabError(f"node {node.name!r}: an activation after a reshape is not supported")
        return Reshape(name=node.name, input=node.inputs[0], output=node.output)
    raise QfabError(f"node {node.name!r}: unknown kind {node.kind}")


def build_graph(fg, qtypes, weights, m_bits=24, metadata=None):
    """IR graph from float graph ``fg``, activation types ``qtypes`` (by tensor) and quantized
    ``weights`` (`FixedWeights` by node name).

    Tensors of type-preserving nodes (MaxPool, Reshape) take their input's type; a fixed type
    that disagrees is an error naming the tensor.
    """
    qtypes = dict(qtypes)
    for node in fg.nodes:
        if type_preserving(node.kind):
            src = qtypes.get(node.inputs[0])
            if node.output in qtypes and src is not None and qtypes[node.output] != src:
                raise QfabError(f"node {node.name!r} ({node.kind}): output type {qtypes[node.output]} differs "
                                f"from input type {src}; qfab keeps the type through {node.kind}")
            if src is not None:
                qtypes[node.output] = src
    missing = [t for t in fg.shapes if t not in qtypes]
    if missing:
        raise QfabError(f"tensor {missing[0]!r} has no quantization parameters (give calibration data, "
                        "or a fully quantized QDQ/QOperator model)")
    tensors = {t: Tensor(t, tuple(shape), qtypes[t]) for t, shape in fg.shapes.items()}
    nodes = tuple(_node(n, tensors, weights.get(n.name), m_bits) for n in fg.nodes)
    graph = Graph(tensors=tensors, nodes=nodes, inputs=tuple(fg.inputs), outputs=tuple(fg.outputs),
                  m_bits=m_bits, input_layout=fg.input_layout, metadata=dict(metadata or {}))
    return verify(graph)


def weights_from_fixed(fg):
    return {n.name: n.fixed for n in fg.nodes if n.fixed is not None}


def activation_type(bits, lo, hi, signed=False):
    """QType covering the real range ``[lo, hi]`` (which must contain 0) with ``bits`` bits.

    Non-negative ranges become unsigned with zero point 0; others asymmetric (``signed=False``,
    unsigned codes with a zero point) or symmetric signed (``signed=True``, zero point 0).
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0:
        hi = 1.0
    if signed:
        qmin, qmax = intops.qrange(bits, True)
        scale = max(abs(lo) / -qmin if qmin else 0.0, hi / qmax if qmax else 0.0)
        return QType(bits, True, float(np.float32(scale)), 0)
    qmax = (1 << bits) - 1
    scale = float(np.float32((hi - lo) / qmax))
    zp = int(np.clip(np.rint(-lo / scale), 0, qmax))
    return QType(bits, False, scale, zp)
