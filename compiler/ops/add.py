"""Add: ``y = clamp(zy + round_shift(ma*(a - za) + mb*(b - zb), shift), lo, hi)`` (residual joins)."""

from dataclasses import dataclass

import numpy as np

from .. import estimate, intops
from ..ir import _Node
from ..plan import Stage
from .base import Op
from .common import check_clamp, check_rounding, clamp_bounds, dyadic, fail, requant_ratio, with_rounding, x_max

__all__ = ["Add", "AddOp"]


@dataclass(frozen=True, eq=False)
class Add(_Node):
    """``y = clamp(zy + round_shift(ma*(a - za) + mb*(b - zb), shift), lo, hi)``; ``rounding``:
    ``half_up`` (``round_shift``) or ``half_even`` (``round_shift_even``, an Add imported from a
    quantized ONNX model: onnxruntime's QLinearAdd rounds its float sum half to even)."""
    a: str
    b: str
    output: str
    m_a: int
    m_b: int
    shift: int
    lo: int
    hi: int
    rounding: str = "half_up"

    @property
    def inputs(self):
        return (self.a, self.b)


class AddOp(Op):
    node_type = Add

    def verify(self, graph, node, a, b, out):
        if not (a.shape == b.shape == out.shape):
            fail(node, f"shapes differ: a {a.shape}, b {b.shape}, output {out.shape}")
        lim = 1 << graph.m_bits
        for what, value in (("m_a", node.m_a), ("m_b", node.m_b)):
            if not isinstance(value, (int, np.integer)) or not 0 <= value < lim:
                fail(node, f"{what} must be an integer in [0, {lim}), not {value!r}")
        if not isinstance(node.shift, (int, np.integer)) or not 0 <= node.shift <= intops.MAX_SHIFT:
            fail(node, f"shift must be in 0..{intops.MAX_SHIFT}, not {node.shift!r}")
        bound = node.m_a * x_max(a) + node.m_b * x_max(b)
        if intops.acc_bits(bound) > intops.MAX_PRODUCT_BITS:
            fail(node, "scaled sum does not fit 62 bits")
        check_clamp(node, node.lo, node.hi, out)
        check_rounding(node)

    def reference(self, node, xs, ta, tb, tout):
        a, b = xs
        acc = (node.m_a * (a.astype(np.int64) - ta.qtype.zero_point)
               + node.m_b * (b.astype(np.int64) - tb.qtype.zero_point))
        return intops.requantize(acc, 1, node.shift, tout.qtype.zero_point, node.lo, node.hi, node.rounding)

    def with_rounding(self, node, rounding):
        """``node`` with the shift's rule for exact ties ``rounding`` (docs/semantics.md)."""
        return with_rounding(node, rounding)

    def float_forward(self, fnode, xs):
        return xs[0] + xs[1]

    def from_float(self, fnode, tensors, fixed, m_bits):
        ta, tb, tout = tensors[fnode.inputs[0]], tensors[fnode.inputs[1]], tensors[fnode.output]
        ratios = [requant_ratio(t.qtype.scale, divide_by=tout.qtype.scale) for t in (ta, tb)]
        (_, na), (_, nb) = (dyadic(fnode, r, m_bits) for r in ratios)
        n = min(na, nb)
        ra, rb = (float(r) for r in ratios)
        lo, hi = clamp_bounds(fnode.act, tout.qtype)
        return Add(name=fnode.name, a=fnode.inputs[0], b=fnode.inputs[1], output=fnode.output,
                   m_a=int(round(ra * 2 ** n)), m_b=int(round(rb * 2 ** n)), shift=n, lo=lo, hi=hi)

    def stage(self, graph, node):
        return Stage(node.name, "add", graph.tensors[node.output].size, 1, 1,
                     a_bits=graph.tensors[node.a].qtype.bits)

    @staticmethod
    def requant_choice(node, work, fold, family):
        """``multiply`` or ``shift_add`` for the two constant multipliers
        (`estimate.choose_const_requant`), for the estimate and the lowering alike."""
        return estimate.choose_const_requant(work, fold, family, levels=int(node.hi) - int(node.lo),
                                             multipliers=[int(node.m_a), int(node.m_b)], thresholds=False)

    def estimate(self, graph, node, work, fold, m):
        choice = self.requant_choice(node, work, fold, m.get("target_family", "ice40"))
        return estimate.stage_resources(work, fold, m, graph.m_bits, requant=choice)

    def lower(self, lw, node, fold, work):
        g = lw.graph
        ta, tb, tout = g.tensors[node.a], g.tensors[node.b], g.tensors[node.output]
        params = dict(a_shape=lw.element(ta.qtype), b_shape=lw.element(tb.qtype), out_shape=lw.element(tout.qtype),
                      a_zero_point=ta.qtype.zero_point, b_zero_point=tb.qtype.zero_point,
                      a_multiplier=node.m_a, b_multiplier=node.m_b, shift=node.shift,
                      out_zero_point=tout.qtype.zero_point, lo=node.lo, hi=node.hi, simd=fold.simd,
                      rounding=node.rounding)
        if work is not None and self.requant_choice(node, work, fold, lw.policy.family).mode != "multiply":
            params["requant"] = "shift_add"
        s = lw.stage(node, "", kind="add", engine="Add", params=params, in_per_beat=fold.simd,
                     out_per_beat=fold.simd, cycles=work.cycles(fold), fold=fold, inputs=("a", "b"))
        lw.connect(node.a, f"{s.name}.a", fold.simd)
        lw.connect(node.b, f"{s.name}.b", fold.simd)
        return f"{s.name}.o", fold.simd

    def latency(self, graph, node, stage):
        """1 cycle from the later of the two input beats to the sum (hw/add.py)."""
        return 1

    def qdq(self, writer, node, x):
        y = writer.op("Add", [x, writer.float_of[node.b]], f"{node.output}_float")
        return writer.clamp(node.output, node.lo, node.hi, y)

    def torch_forward(self, net, fnode, xs):
        return xs[0] + xs[1]
