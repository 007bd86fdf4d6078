"""Dense (fully connected): ``y = requant(b + sum_p m_p * W_p (x - zx))``, weights ``(P, N, K)``."""

from dataclasses import dataclass

import numpy as np

from ..ir import _MatNode
from ..plan import Stage
from .common import exact_int, fail
from .matrix import MatrixOp

__all__ = ["Dense", "DenseOp"]


@dataclass(frozen=True, eq=False)
class Dense(_MatNode):
    """``y = requant(b + sum_p m_p * W_p (x - zx))``; weights ``(P, N, K)``."""


class DenseOp(MatrixOp):
    node_type = Dense
    weight_ndim = 3

    def verify(self, graph, node, inp, out):
        super().verify(graph, node, inp, out)
        _, n, k = node.weights.shape
        if inp.shape != (k,):
            fail(node, f"input {inp.name!r} has shape {inp.shape}, weights expect ({k},)")
        if out.shape != (n,):
            fail(node, f"output {out.name!r} has shape {out.shape}, expected ({n},)")

    def reference(self, node, xs, tin, tout):
        xs = (xs[0] - tin.qtype.zero_point).astype(np.float64)
        rows = node.weight_rows().astype(np.float64)                   # (P, N, K)
        dots = np.stack([exact_int(xs @ rows[p].T) for p in range(node.points)])
        return node.requant.apply(self.accumulate(node, dots), tout.qtype.zero_point, node.rounding)

    def float_forward(self, fnode, xs):
        return xs[0] @ fnode.weight.T + fnode.bias

    def macs(self, graph, node):
        return node.points * node.out_channels * node.fan_in

    def stage(self, graph, node):
        return Stage(node.name, "mvau", node.out_channels, node.fan_in, 1, node.points, node.fan_in,
                     node.w_type.bits, graph.tensors[node.input].qtype.bits)

    def lower(self, lw, node, fold, work):
        s = self.mvau(lw, node, fold, work)
        lw.connect(node.input, f"{s.name}.i", fold.simd)
        return f"{s.name}.o", fold.pe

    def qdq_float(self, writer, node, x, w, b):
        return writer.op("Gemm", [x, w, b], f"{node.output}_float", transB=1)

    def torch_forward(self, net, fnode, xs):
        import torch.nn.functional as F
        w, b = net.quantized_weight(fnode)
        return F.linear(xs[0], w, b)
