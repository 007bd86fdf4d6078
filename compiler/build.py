"""Float graph + quantization choices -> IR `Graph`.

Shared by post-training quantization (which chooses the types) and the QDQ/QOperator import
(which reads them from the model). Each float node becomes its IR node through its operator's
``from_float`` (`qfab.compiler.ops`), where its real multipliers become dyadic pairs
(`qfab.compiler.ops.common.requant_of`); the arithmetic follows docs/semantics.md.
"""

import numpy as np

from qfab.base.errors import QfabError

from . import intops
from .ir import Graph, QType, Tensor
from .ops import op_for
from .ops.common import clamp_bounds, requant_ratio
from .verify import verify

__all__ = ["build_graph", "requant_ratio", "type_preserving", "clamp_bounds"]


def type_preserving(kind):
    """Whether nodes of ``kind`` keep their input's type (MaxPool, Reshape)."""
    return op_for(kind).type_preserving


def _node(node, tensors, fixed, m_bits):
    return op_for(node.kind).from_float(node, tensors, fixed, m_bits)


def _rounded(node, rounding):
    op = op_for(node.kind)
    if rounding == "half_up" or not hasattr(op, "with_rounding"):
        return node
    return op.with_rounding(node, rounding)


def build_graph(fg, qtypes, weights, m_bits=24, metadata=None, rounding=None):
    """IR graph from float graph ``fg``, activation types ``qtypes`` (by tensor) and quantized
    ``weights`` (`FixedWeights` by node name).

    Tensors of type-preserving nodes (MaxPool, Reshape) take their input's type; a fixed type
    that disagrees is an error naming the tensor. ``rounding`` (default: ``fg.pool_rounding`` if
    the front-end set it, else ``"half_up"``) is the rounding rule of the nodes whose operator
    has a choice (``with_rounding``: the average pools; docs/semantics.md).
    """
    rounding = rounding or getattr(fg, "pool_rounding", None) or "half_up"
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
    nodes = tuple(_rounded(_node(n, tensors, weights.get(n.name), m_bits), rounding) for n in fg.nodes)
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
