"""BiasAdd: a per-channel integer constant added to a quantized tensor, then requantized,
``y = clamp(zy + round_shift(m_a * (x - zx) + bias[c], shift), lo, hi)``.

What a quantized model means by a constant ``Add`` after a tensor that already has its own type
(the ONNX model zoo's separate bias adds, quantized by onnxruntime without ``quant_pre_process``:
``Conv -> Q(s1) -> DQ -> Add(DQ(int8 bias)) -> Q(s2)``, or ``QLinearConv -> QLinearAdd(conv, int8
constant)``): two roundings, the layer's to ``s1`` and the add's to ``s2``, each kept. ``c`` is the
channel, the tensor's last axis (the channels of an ``(H, W, C)`` map, every element of a vector).
``m_a / 2**shift = s_x / s_y`` and the integer ``bias[c]`` come from the constant's codes and
scales (`bias_offsets`). In hardware it is `qfab.hw.add.Add` with the constants
as its second operand (one ROM of ``C / SIMD`` entries per lane).
"""

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from qfab.base.errors import QfabError

from .. import estimate, intops
from ..ir import _Node
from ..plan import Stage
from .base import Op
from .common import (
    check_clamp,
    check_int_array,
    check_rounding,
    clamp_bounds,
    dyadic,
    fail,
    requant_ratio,
    with_rounding,
    x_max,
)

__all__ = ["BiasAdd", "BiasAddOp", "BiasConstant", "bias_offsets"]


@dataclass(frozen=True, eq=False)
class BiasAdd(_Node):
    """``y = clamp(zy + round_shift(m_a * (x - zx) + bias[c], shift), lo, hi)``, ``c`` the last axis;
    ``rounding``: ``half_up`` (``round_shift``) or ``half_even`` (``round_shift_even``)."""
    input: str
    output: str
    m_a: int
    shift: int
    bias: np.ndarray
    lo: int
    hi: int
    rounding: str = "half_up"


@dataclass(frozen=True, eq=False)
class BiasConstant:
    """The constant of a bias add as a quantized ONNX model stores it (the float node's ``fixed``),
    one entry per channel in the IR's order: integer ``codes`` with one ``scale`` and
    ``zero_point``, or float values (``scale`` None: a QDQ model's unquantized constant)."""
    codes: np.ndarray
    scale: float | None = None
    zero_point: int = 0


def bias_offsets(const, tout, shift):
    """The integer ``bias[c]`` of a `BiasAdd` with ``shift`` for the constant ``const``
    (`BiasConstant`) added to a tensor of output type ``tout``: ``2**shift * (b[c] - zb) * rB``
    with ``rB = sb / sy`` in float32 as onnxruntime computes it (`requant_ratio`), or
    ``2**shift * c / sy`` for a float constant; computed exactly, rounded half to even (exact when
    the constant part has no bits below ``2**-shift``, as when ``rB >= rA``).

    With ``m_a / 2**shift = rA = sx / sy`` (float32, exact with 24-bit multipliers) the node then
    rounds ``zy + rA * (x - zx) + rB * (b - zb)`` half to even, which is what ONNX defines for
    ``QLinearAdd`` and for ``DequantizeLinear -> Add -> QuantizeLinear``. onnxruntime computes it
    in float32 (its QLinearAdd kernel: ``nearbyint(x * rA + P[c])``, the constant part ``P[c]``
    and the sum each rounded to float32), so where the exact value is within float32 rounding of a
    tie (about 1e-7 relative) the two can differ by one code. An int32 constant of scale
    ``sy / 2**shift`` (qfab's QDQ writer) gives back its codes."""
    if const.scale is None:
        sy = Fraction(float(np.float32(tout.scale)))
        values = [Fraction(float(np.float32(v))) / sy for v in np.asarray(const.codes, np.float64)]
    else:
        rb = Fraction(float(requant_ratio(const.scale, divide_by=tout.scale)))
        values = [(int(v) - int(const.zero_point)) * rb for v in np.asarray(const.codes)]
    return np.array([round(v * (1 << shift)) for v in values], dtype=np.int64)


def _channels(shape):
    """The constant's channels: the last axis of an ``(H, W, C)`` map or a vector."""
    return int(shape[-1])


class BiasAddOp(Op):
    node_type = BiasAdd

    def verify(self, graph, node, inp, out):
        if inp.shape != out.shape:
            fail(node, f"output {out.name!r} has shape {out.shape}, expected the input's {inp.shape}")
        check_int_array(node, "bias", node.bias, (_channels(inp.shape),))
        lim = 1 << graph.m_bits
        if not isinstance(node.m_a, (int, np.integer)) or not 0 <= node.m_a < lim:
            fail(node, f"m_a must be an integer in [0, {lim}), not {node.m_a!r}")
        if not isinstance(node.shift, (int, np.integer)) or not 0 <= node.shift <= intops.MAX_SHIFT:
            fail(node, f"shift must be in 0..{intops.MAX_SHIFT}, not {node.shift!r}")
        bias_max = int(np.abs(node.bias).max(initial=0))
        if intops.acc_bits(int(node.m_a) * x_max(inp) + bias_max) > intops.MAX_PRODUCT_BITS:
            fail(node, f"m_a * (x - zx) + bias does not fit {intops.MAX_PRODUCT_BITS} bits")
        check_clamp(node, node.lo, node.hi, out)
        check_rounding(node)

    def reference(self, node, xs, tin, tout):
        acc = node.m_a * (xs[0].astype(np.int64) - tin.qtype.zero_point) + np.asarray(node.bias, np.int64)
        return intops.requantize(acc, 1, node.shift, tout.qtype.zero_point, node.lo, node.hi, node.rounding)

    def with_rounding(self, node, rounding):
        """``node`` with the shift's rule for exact ties ``rounding`` (docs/semantics.md)."""
        return with_rounding(node, rounding)

    def float_forward(self, fnode, xs):
        return xs[0] + fnode.bias

    def from_float(self, fnode, tensors, fixed, m_bits):
        tin, tout = tensors[fnode.inputs[0]], tensors[fnode.output]
        m_a, shift = dyadic(fnode, requant_ratio(tin.qtype.scale, divide_by=tout.qtype.scale), m_bits)
        const = fixed if fixed is not None else BiasConstant(np.asarray(fnode.bias, np.float64))
        lo, hi = clamp_bounds(fnode.act, tout.qtype)
        return BiasAdd(name=fnode.name, input=fnode.inputs[0], output=fnode.output, m_a=int(m_a), shift=int(shift),
                       bias=bias_offsets(const, tout.qtype, int(shift)), lo=lo, hi=hi)

    def params(self, graph, node):
        bits = max(2, int(np.abs(node.bias).max(initial=0)).bit_length() + 1)
        return int(node.bias.size), int(node.bias.size) * bits, "-"

    def macs(self, graph, node):
        return graph.tensors[node.output].size

    # ---- hardware -------------------------------------------------------------------------------
    def stage(self, graph, node):
        tin = graph.tensors[node.input]
        c = _channels(tin.shape)
        return Stage(node.name, "add", c, 1, tin.size // c, a_bits=tin.qtype.bits)

    @staticmethod
    def requant_choice(node, work, fold, family):
        """``multiply`` or ``shift_add`` for the constant multiplier ``m_a``
        (`estimate.choose_const_requant`), for the estimate and the lowering alike."""
        return estimate.choose_const_requant(work, fold, family, levels=int(node.hi) - int(node.lo),
                                             multipliers=[int(node.m_a)], thresholds=False)

    def estimate(self, graph, node, work, fold, m):
        choice = self.requant_choice(node, work, fold, m.get("target_family", "ice40"))
        return estimate.stage_resources(work, fold, m, graph.m_bits, requant=choice)

    def lower(self, lw, node, fold, work):
        tin, tout = lw.graph.tensors[node.input], lw.graph.tensors[node.output]
        params = dict(a_shape=lw.element(tin.qtype), b_shape=None, out_shape=lw.element(tout.qtype),
                      a_zero_point=tin.qtype.zero_point, b_zero_point=0, a_multiplier=int(node.m_a),
                      b_multiplier=1, shift=int(node.shift), out_zero_point=tout.qtype.zero_point,
                      lo=int(node.lo), hi=int(node.hi), simd=fold.simd, rounding=node.rounding,
                      b_constants=[int(v) for v in node.bias])
        if work is not None and self.requant_choice(node, work, fold, lw.policy.family).mode != "multiply":
            params["requant"] = "shift_add"
        s = lw.stage(node, "", kind="bias_add", engine="Add", params=params, in_per_beat=fold.simd,
                     out_per_beat=fold.simd, cycles=work.cycles(fold), fold=fold, inputs=("a",))
        lw.connect(node.input, f"{s.name}.a", fold.simd)
        return f"{s.name}.o", fold.simd

    def latency(self, graph, node, stage):
        """1 cycle from the input beat to the sum (hw/add.py)."""
        return 1

    # ---- export and training ----------------------------------------------------------------------
    def qdq(self, writer, node, x):
        """``Add`` of ``DequantizeLinear(int32 bias, s_y / 2**shift)`` (``bias / 2**k`` at
        ``s_y / 2**(shift - k)`` when the bias needs more than 31 bits and has ``k`` trailing
        zeros): the importer reads it back exactly (`bias_offsets`) and finds ``m_a`` and ``shift``
        again from the scales, so the round trip keeps every integer."""
        g = writer.g
        tin, tout = g.tensors[node.input].qtype, g.tensors[node.output].qtype
        if dyadic(node, requant_ratio(tin.scale, divide_by=tout.scale), g.m_bits) != (node.m_a, node.shift):
            raise QfabError(f"node {node.name!r}: m_a / 2**shift is not the dyadic form of s_x / s_y, "
                            "which the QDQ form cannot carry")
        bias = np.asarray(node.bias, np.int64)
        k = 0            # store bias / 2**k at scale s_y / 2**(shift - k) when int32 needs it and k is exact
        while np.abs(bias).max(initial=0) >> k > np.iinfo(np.int32).max and k < node.shift \
                and not np.any(bias & ((2 << k) - 1)):
            k += 1
        if np.abs(bias >> k).max(initial=0) > np.iinfo(np.int32).max:
            raise QfabError(f"node {node.name!r}: bias does not fit int32, which the QDQ form needs")
        scale = np.float32(np.ldexp(np.float32(tout.scale), k - int(node.shift)))
        if not np.isfinite(scale) or scale < np.finfo(np.float32).tiny:
            raise QfabError(f"node {node.name!r}: the bias scale s_y / 2**{node.shift - k} is not a normal float32")
        bias = bias >> k                                        # a new array: the node keeps its own
        shape = g.tensors[node.input].shape
        if len(shape) == 3:
            bias = bias.reshape(-1, 1, 1)                       # per channel of an (N, C, H, W) map
        elif node.input in writer.channels_first:               # a flattened map in ONNX's order
            perm = writer.channels_first[node.input]
            onnx_order = np.empty_like(bias)
            onnx_order[perm] = bias
            bias = onnx_order
            writer.channels_first[node.output] = perm
        b_q = writer.const(f"{node.name}_bias_int", bias.astype(np.int32))
        b_s = writer.const(f"{node.name}_bias_scale", np.array(scale, np.float32))
        b_zp = writer.const(f"{node.name}_bias_zero_point", np.array(0, np.int32))
        b = writer.op("DequantizeLinear", [b_q, b_s, b_zp], f"{node.name}_bias")
        y = writer.op("Add", [x, b], f"{node.output}_float")
        return writer.clamp(node.output, node.lo, node.hi, y)

    def torch_forward(self, net, fnode, xs):
        import torch
        x = xs[0]
        b = torch.tensor(np.asarray(fnode.bias, np.float32))
        return x + (b.reshape(-1, 1, 1) if x.dim() == 4 else b)

