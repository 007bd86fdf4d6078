"""The float graph: what a front-end reads from a model, before quantization.

Same node kinds and channels-last layout as the IR, with float weights, BatchNorm already folded
and ReLU/Clip fused as ``act``. A node or tensor may carry *fixed* quantization (from an already
quantized QDQ/QOperator model); `qfab.compiler.build` then uses it instead of calibrating.
`forward` runs the float network (for calibration statistics and float accuracy).
"""

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .ir import Layout

__all__ = ["Act", "FixedWeights", "FNode", "FGraph", "forward"]


@dataclass(frozen=True)
class Act:
    """A fused activation: ``relu``, or ``clip`` to ``[lo, hi]`` (reals)."""
    kind: str = "none"          # "none" | "relu" | "clip"
    lo: float = float("-inf")
    hi: float = float("inf")

    def apply(self, y):
        if self.kind == "relu":
            return np.maximum(y, 0.0)
        if self.kind == "clip":
            return np.clip(y, self.lo, self.hi)
        return y

    def then(self, other):
        """This activation followed by ``other``."""
        lo = max(self.real_lo, other.real_lo)
        hi = min(self.real_hi, other.real_hi)
        if hi == float("inf") and lo == 0.0:
            return Act("relu")
        if lo == float("-inf") and hi == float("inf"):
            return Act()
        return Act("clip", lo, hi)

    @property
    def real_lo(self):
        return 0.0 if self.kind == "relu" else self.lo

    @property
    def real_hi(self):
        return self.hi


@dataclass(frozen=True, eq=False)
class FixedWeights:
    """Integer weights and bias: from an already-quantized model, or chosen by a quantizer.

    With ``multipliers`` (``(P, C)``, multipoint quantization) ``w_int`` has a leading points axis.
    """
    w_int: np.ndarray           # same shape as FNode.weight, or (P, *that shape)
    scales: np.ndarray          # (C,)
    bits: int
    signed: bool
    b_int: np.ndarray | None    # (C,) int32 with scale s_in * scales, or None
    multipliers: np.ndarray | None = None

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, eq=False)
class FNode:
    """``kind`` is an IR node kind name; attributes as in `qfab.compiler.ir`.

    ``weight``: Dense ``(N, K)``, Conv2d ``(Cout, KH, KW, Cin/groups)``; ``bias`` ``(C,)``.
    """
    kind: str
    name: str
    inputs: tuple
    output: str
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)
    groups: int = 1
    act: Act = Act()
    fixed: FixedWeights | None = None

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(eq=False)
class FGraph:
    """Tensors by name -> shape (channels-last, no batch axis); nodes in topological order.

    ``qtypes`` holds fixed activation types (`qfab.compiler.ir.QType`) by tensor name.
    """
    shapes: dict
    nodes: list
    inputs: tuple
    outputs: tuple
    input_layout: Layout = Layout.NHWC
    qtypes: dict = field(default_factory=dict)

    def producer(self, name):
        return next((n for n in self.nodes if n.output == name), None)

    def consumers(self, name):
        return [n for n in self.nodes if name in n.inputs]


def _eval(node, xs):
    from .ops import op_for
    return node.act.apply(op_for(node.kind).float_forward(node, xs))


def forward(fg, x, keep=()):
    """Float forward pass on a channels-last batch; returns outputs (and ``keep`` tensors)."""
    env = {fg.inputs[0]: np.asarray(x, dtype=np.float64)}
    for node in fg.nodes:
        y = _eval(node, [env[n] for n in node.inputs])
        env[node.output] = y.reshape(y.shape[0], *fg.shapes[node.output])
    wanted = set(fg.outputs) | set(keep)
    return {k: v for k, v in env.items() if k in wanted}
