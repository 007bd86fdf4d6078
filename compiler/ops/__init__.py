"""The operator registry: one `Op` per IR node kind (see `qfab.compiler.ops.base`).

Adding an operator: write its module here (the IR node dataclass and an `Op` subclass), add the
instance to `OPS` below, and give it a hardware engine in `qfab.hw`.
"""

from qfab.base.errors import QfabError

from .add import Add, AddOp
from .base import Op
from .bias_add import BiasAdd, BiasAddOp
from .conv2d import Conv2d, Conv2dOp
from .dense import Dense, DenseOp
from .depthwise import DepthwiseConv2d, DepthwiseConv2dOp
from .pools import AvgPool, AvgPoolOp, GlobalAvgPool, GlobalAvgPoolOp, MaxPool, MaxPoolOp
from .requantize import Requantize, RequantizeOp
from .reshape import Reshape, ReshapeOp

__all__ = ["Op", "OPS", "NODE_TYPES", "op_for", "Dense", "Conv2d", "MaxPool", "AvgPool", "GlobalAvgPool",
           "Add", "Reshape", "Requantize", "DepthwiseConv2d", "BiasAdd"]

OPS = {op.kind: op for op in (DenseOp(), Conv2dOp(), MaxPoolOp(), AvgPoolOp(), GlobalAvgPoolOp(), AddOp(),
                              ReshapeOp(), RequantizeOp(), DepthwiseConv2dOp(), BiasAddOp())}
NODE_TYPES = {kind: op.node_type for kind, op in OPS.items()}


def op_for(node_or_kind):
    """The `Op` of an IR node, a float node or a kind name; `QfabError` for an unknown kind."""
    kind = node_or_kind if isinstance(node_or_kind, str) else node_or_kind.kind
    op = OPS.get(kind)
    if op is None:
        raise QfabError(f"unknown operator kind {kind!r} (known: {', '.join(OPS)})")
    return op
