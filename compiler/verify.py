"""The IR verifier: every rule of docs/semantics.md that a graph must keep.

Run after import, after every pass and after loading a file. Errors name the node or tensor.
"""

import math

import numpy as np

from qfab.base.errors import VerifyError

from .ir import Graph
from .ops import OPS
from .ops.common import BIAS_BITS, MULTIPLIER_BITS, conv_output_hw, fail as _fail

MAX_DIM = 1 << 20
MAX_ELEMENTS = 1 << 31
pool_output_hw = conv_output_hw


WIDE_OUTPUT_BITS = 32


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
    top = WIDE_OUTPUT_BITS if name in graph.outputs and name not in graph.inputs else 8
    if not isinstance(q.bits, (int, np.integer)) or not 1 <= q.bits <= top:
        what = " for a graph output (a wide output no node reads)" if top > 8 else ""
        raise VerifyError(f"tensor {name!r}: bits must be 1 to {top}{what}, not {q.bits!r}")
    if not (isinstance(q.scale, float) and math.isfinite(q.scale) and q.scale > 0):
        raise VerifyError(f"tensor {name!r}: scale must be a positive finite float, not {q.scale!r}")
    if not q.qmin <= q.zero_point <= q.qmax:
        raise VerifyError(f"tensor {name!r}: zero point {q.zero_point} outside the code range "
                          f"[{q.qmin}, {q.qmax}] of {q.describe()}")
    return t



__all__ = ["verify", "conv_output_hw", "pool_output_hw", "BIAS_BITS", "MULTIPLIER_BITS"]

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
        for t in tensors[:-1]:
            if t.qtype.bits > 8:
                _fail(node, f"input {t.name!r} has {t.qtype.bits} bits; only a graph output may be wider than 8")
        op = OPS.get(type(node).__name__)
        if op is None or not isinstance(node, op.node_type):
            raise VerifyError(f"node {node.name!r}: unknown kind {type(node).__name__}")
        op.verify(graph, node, *tensors)
        defined.add(node.output)
    for name in graph.outputs:
        if name not in defined:
            raise VerifyError(f"graph output {name!r} is never produced")
    return graph
