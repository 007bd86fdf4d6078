"""Requantize: a tensor moved to another quantized type, ``y = clamp(zy + round_shift((x - zx) * m0,
shift), lo, hi)`` with one multiplier for the whole tensor.

What a model means when it quantizes one tensor twice with different parameters (a QDQ model's
``DequantizeLinear -> QuantizeLinear`` with a new scale). In hardware it is the average-pool
engine over a window of one element, without a sliding window in front: one requantization per
element, ``SIMD`` elements per cycle.
"""

from dataclasses import dataclass

import numpy as np

from .. import estimate
from ..ir import Requant, _Node
from ..plan import Stage
from .base import Op
from .common import check_requant, check_rounding, fail, requant_of, requant_ratio, with_rounding, x_max
from .pools import POOL_LATENCY

__all__ = ["Requantize", "RequantizeOp"]


@dataclass(frozen=True, eq=False)
class Requantize(_Node):
    """``y = clamp(zy + round_shift((x - zx) * m0, shift), lo, hi)``; ``requant`` has one entry;
    ``rounding``: ``half_up`` or ``half_even`` (``round_shift_even``), as for `Conv2d`."""
    input: str
    output: str
    requant: Requant
    rounding: str = "half_up"


def _channels(shape):
    """Elements per pixel: the channels of an ``(H, W, C)`` map, all of a vector."""
    return int(shape[-1])


class RequantizeOp(Op):
    node_type = Requantize

    def verify(self, graph, node, inp, out):
        if inp.shape != out.shape:
            fail(node, f"output {out.name!r} has shape {out.shape}, expected the input's {inp.shape}")
        check_requant(graph, node, node.requant, 1, x_max(inp), out)
        check_rounding(node)

    def with_rounding(self, node, rounding):
        """``node`` with the rule for exact ties ``rounding`` (docs/semantics.md)."""
        return with_rounding(node, rounding)

    def reference(self, node, xs, tin, tout):
        return node.requant.apply(xs[0].astype(np.int64) - tin.qtype.zero_point, tout.qtype.zero_point,
                                  node.rounding)

    def float_forward(self, fnode, xs):
        return xs[0]

    def from_float(self, fnode, tensors, fixed, m_bits):
        tin, tout = tensors[fnode.inputs[0]], tensors[fnode.output]
        r = requant_ratio(tin.qtype.scale, divide_by=tout.qtype.scale)
        return Requantize(name=fnode.name, input=fnode.inputs[0], output=fnode.output,
                          requant=requant_of(fnode, r, tout.qtype, m_bits))

    def stage(self, graph, node):
        tin = graph.tensors[node.input]
        c = _channels(tin.shape)
        return Stage(node.name, "avgpool", c, 1, tin.size // c, a_bits=tin.qtype.bits)

    @staticmethod
    def requant_choice(node, work, fold, family):
        """How the engine requantizes (`estimate.choose_const_requant`), for its estimate and lowering."""
        rq = node.requant
        return estimate.choose_const_requant(work, fold, family, levels=int(rq.hi) - int(rq.lo),
                                             multipliers=[int(rq.m0[0])])

    def estimate(self, graph, node, work, fold, m):
        choice = self.requant_choice(node, work, fold, m.get("target_family", "ice40"))
        return estimate.stage_resources(work, fold, m, graph.m_bits, requant=choice)

    def lower(self, lw, node, fold, work):
        tin, tout = lw.graph.tensors[node.input], lw.graph.tensors[node.output]
        params = dict(shape=lw.element(tin.qtype), window=1, channels=_channels(tin.shape),
                      zero_point=tin.qtype.zero_point, multiplier=int(node.requant.m0[0]),
                      shift=int(node.requant.shift[0]), out_shape=lw.element(tout.qtype),
                      out_zero_point=tout.qtype.zero_point, lo=node.requant.lo, hi=node.requant.hi, simd=fold.simd,
                      rounding=node.rounding)
        if work is not None:
            choice = self.requant_choice(node, work, fold, lw.policy.family)
            if choice.mode != "multiply":
                params["requant"] = choice.mode
        s = lw.stage(node, "", kind="avgpool", engine="AvgPool", params=params, in_per_beat=fold.simd,
                     out_per_beat=fold.simd, cycles=work.cycles(fold), fold=fold)
        lw.connect(node.input, f"{s.name}.i", fold.simd)
        return f"{s.name}.o", fold.simd

    def latency(self, graph, node, stage):
        """The average-pool engine's over one element: 1 cycle (hw/pool.py)."""
        return POOL_LATENCY

    def qdq(self, writer, node, x):
        y = writer.op("Identity", [x], f"{node.output}_float")
        return writer.clamp(node.output, node.requant.lo, node.requant.hi, y)

    def torch_forward(self, net, fnode, xs):
        return xs[0]
