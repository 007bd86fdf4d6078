"""Reshape (Flatten): the same codes in the same row-major order, a new shape. Free in hardware:
the stream is only renamed."""

from dataclasses import dataclass

import numpy as np

from qfab.base.errors import QfabError

from ..ir import _Node
from .base import Op
from .common import fail

__all__ = ["Reshape", "ReshapeOp"]


@dataclass(frozen=True, eq=False)
class Reshape(_Node):
    """Flatten or reshape: the same codes in the same row-major order, a new shape."""
    input: str
    output: str


class ReshapeOp(Op):
    node_type = Reshape
    type_preserving = True

    def verify(self, graph, node, inp, out):
        if inp.size != out.size:
            fail(node, f"cannot reshape {inp.shape} ({inp.size} elements) to {out.shape} ({out.size})")
        if inp.qtype != out.qtype:
            fail(node, "Reshape must keep the type")

    def reference(self, node, xs, tin, tout):
        return xs[0].reshape(xs[0].shape[0], *tout.shape)

    def float_forward(self, fnode, xs):
        return xs[0]

    def from_float(self, fnode, tensors, fixed, m_bits):
        if fnode.act.kind != "none":
            raise QfabError(f"node {fnode.name!r}: an activation after a reshape is not supported")
        return Reshape(name=fnode.name, input=fnode.inputs[0], output=fnode.output)

    def stage(self, graph, node):
        return None

    def estimate(self, graph, node, work, fold, m):
        from ..estimate import Resources
        return Resources()

    def lower(self, lw, node, fold, work):
        return lw.source_of(node.input)

    def qdq(self, writer, node, x):
        shape_in = writer.g.tensors[node.input].shape
        if len(writer.g.tensors[node.output].shape) != 1:
            raise QfabError(f"node {node.name!r}: only flattening reshapes have a QDQ form")
        y = writer.op("Flatten", [x], f"{node.output}_float", axis=1)
        if len(shape_in) == 3 and writer.nchw and shape_in[0] * shape_in[1] > 1:
            h, w, c = shape_in
            writer.channels_first[node.output] = np.arange(h * w * c).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
        elif node.input in writer.channels_first:
            writer.channels_first[node.output] = writer.channels_first[node.input]
        return y

    def torch_forward(self, net, fnode, xs):
        x = xs[0]                                   # flatten channels-last, the IR's order
        return (x.permute(0, 2, 3, 1) if x.dim() == 4 else x).reshape(len(x), -1)
