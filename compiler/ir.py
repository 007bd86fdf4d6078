"""qfab's quantized intermediate representation: an integer-only network.

Frozen dataclasses; the meaning of every field is in docs/semantics.md. Activations are
channels-last and shapes leave out the batch axis. Arrays are int64 numpy arrays; a node owns its
constants and nobody mutates them (passes build new nodes with ``dataclasses.replace``).

`qfab.compiler.verify.verify` checks a `Graph` against every rule written here.

The node types themselves (``Dense``, ``Conv2d``, ``MaxPool``, ``AvgPool``, ``GlobalAvgPool``,
``Add``, ``Reshape``) are defined with their operators in `qfab.compiler.ops` (one module each,
with their verification, reference, lowering, ...); importing them from here works too.
"""

import dataclasses
import enum
from dataclasses import dataclass, field

import numpy as np

from . import intops

__all__ = ["QType", "WeightType", "Tensor", "Requant", "Graph", "Layout"]   # node types: see __getattr__


@dataclass(frozen=True)
class QType:
    """An activation type: ``bits`` (1..8), ``signed``, ``scale`` (> 0), ``zero_point``."""
    bits: int
    signed: bool
    scale: float
    zero_point: int = 0

    @property
    def qmin(self):
        return intops.qrange(self.bits, self.signed)[0]

    @property
    def qmax(self):
        return intops.qrange(self.bits, self.signed)[1]

    def describe(self):
        return f"{'i' if self.signed else 'u'}{self.bits}"


@dataclass(frozen=True, eq=False)
class WeightType:
    """A weight type: ``bits``, ``signed`` or ``bipolar`` ({-1, +1}, 1 bit), per-channel scales.

    ``scales`` has one positive float per output channel (a per-tensor weight repeats one value).
    """
    bits: int
    signed: bool
    scales: np.ndarray
    bipolar: bool = False

    @property
    def qmin(self):
        return intops.qrange(self.bits, self.signed, self.bipolar)[0]

    @property
    def qmax(self):
        return intops.qrange(self.bits, self.signed, self.bipolar)[1]

    @property
    def max_abs(self):
        return max(abs(self.qmin), abs(self.qmax))

    @property
    def per_channel(self):
        return bool(np.unique(self.scales).size > 1)

    def describe(self):
        return "bipolar" if self.bipolar else f"{'i' if self.signed else 'u'}{self.bits}"


@dataclass(frozen=True)
class Tensor:
    """A value of the graph: ``shape`` without the batch axis, channels-last."""
    name: str
    shape: tuple
    qtype: QType

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True, eq=False)
class Requant:
    """Dyadic requantization ``clamp(zp_out + round_shift(acc * m0, shift), lo, hi)``.

    ``m0`` and ``shift`` are int64 arrays with one entry per output channel; ``zp_out`` is the
    output tensor's zero point; ``lo``/``hi`` is the output clamp.
    """
    m0: np.ndarray
    shift: np.ndarray
    lo: int
    hi: int

    def apply(self, acc, zero_point, rounding="half_up"):
        """The requantization of ``acc``; ``rounding`` is the node's rule for exact ties
        (``half_up`` or ``half_even``, `intops.ROUNDING`)."""
        return intops.requantize(acc, self.m0, self.shift, zero_point, self.lo, self.hi, rounding)


class Layout(enum.Enum):
    """How the original model laid out a feature map at the graph boundary."""
    NHWC = "NHWC"
    NCHW = "NCHW"


@dataclass(frozen=True, eq=False)
class _Node:
    name: str

    @property
    def inputs(self):
        return (self.input,)

    @property
    def kind(self):
        return type(self).__name__


@dataclass(frozen=True, eq=False)
class _MatNode(_Node):
    """A node with weights: ``weights[p, c, ...]`` points, ``multipliers[p, c]``, ``bias[c]``;
    ``rounding`` is the requantization's rule for exact ties: ``half_up`` (qfab's own) or
    ``half_even`` (a model imported from onnxruntime's formats; docs/semantics.md)."""
    input: str
    output: str
    weights: np.ndarray
    multipliers: np.ndarray
    bias: np.ndarray
    w_type: WeightType
    requant: Requant
    rounding: str = "half_up"

    @property
    def points(self):
        return int(self.weights.shape[0])

    @property
    def out_channels(self):
        return int(self.weights.shape[1])

    @property
    def fan_in(self):
        return int(np.prod(self.weights.shape[2:], dtype=np.int64))

    def weight_rows(self):
        """Weights as ``(P, C, fan_in)``: each output channel's row in window order."""
        return self.weights.reshape(self.points, self.out_channels, self.fan_in)


@dataclass(frozen=True, eq=False)
class Graph:
    """A network: tensors by name, nodes in topological order, one or more inputs and outputs.

    ``input_layout`` records whether the original model took feature maps as NCHW; the reference
    works channels-last and the boundary helpers transpose.
    """
    tensors: dict
    nodes: tuple
    inputs: tuple
    outputs: tuple
    m_bits: int = 24
    input_layout: Layout = Layout.NHWC
    metadata: dict = field(default_factory=dict)

    def tensor(self, name):
        return self.tensors[name]

    def producer(self, name):
        for node in self.nodes:
            if node.output == name:
                return node
        return None

    def consumers(self, name):
        return [node for node in self.nodes if name in node.inputs]

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


_NODE_NAMES = ("Dense", "Conv2d", "MaxPool", "AvgPool", "GlobalAvgPool", "Add", "Reshape")


def __getattr__(name):
    """The node types, `Node` and `NODE_KINDS`, from the operator registry (imported on first use:
    the operator modules import this one)."""
    from . import ops
    if name in ops.NODE_TYPES:
        return ops.NODE_TYPES[name]
    if name == "NODE_KINDS":
        return dict(ops.NODE_TYPES)
    if name == "Node":
        import functools
        import operator
        return functools.reduce(operator.or_, ops.NODE_TYPES.values())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
