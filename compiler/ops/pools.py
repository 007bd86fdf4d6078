"""MaxPool, AvgPool and GlobalAvgPool: window reductions, each its own operator.

MaxPool keeps its input's type (an optional output clamp); AvgPool and GlobalAvgPool sum
``x - zx`` over the window (padding counts, filled with ``zx``) and requantize the sum. In hardware
MaxPool and AvgPool are a `SlidingWindow` feeding the pool engine; GlobalAvgPool is one engine.
"""

from dataclasses import dataclass

import numpy as np

from .. import estimate, intops
from ..ir import Requant, _Node
from ..plan import Stage
from .base import Op
from .common import (
    check_clamp,
    check_requant,
    check_rounding,
    check_window,
    fail,
    requant_of,
    requant_ratio,
    windows,
    with_rounding,
    x_max,
)
from .conv2d import float_windows, window_estimate, window_latency, window_stage

__all__ = ["MaxPool", "AvgPool", "GlobalAvgPool", "MaxPoolOp", "AvgPoolOp", "GlobalAvgPoolOp"]


@dataclass(frozen=True, eq=False)
class MaxPool(_Node):
    input: str
    output: str
    kernel: tuple
    stride: tuple
    padding: tuple = (0, 0, 0, 0)
    lo: int | None = None
    hi: int | None = None


@dataclass(frozen=True, eq=False)
class AvgPool(_Node):
    """Average over a window of ``K = KH*KW`` elements (padding counts, filled with ``zx``).

    ``rounding``: the rule of the requantization's shift, ``half_up`` (qfab's own) or
    ``half_even`` (a pool imported from a quantized ONNX model; docs/semantics.md).
    """
    input: str
    output: str
    kernel: tuple
    stride: tuple
    requant: Requant
    padding: tuple = (0, 0, 0, 0)
    rounding: str = "half_up"


@dataclass(frozen=True, eq=False)
class GlobalAvgPool(_Node):
    """Average over the whole ``H x W`` plane of each channel; output ``(1, 1, C)``; ``rounding``
    as `AvgPool`."""
    input: str
    output: str
    requant: Requant
    rounding: str = "half_up"


POOL_LATENCY = 1        # hw/pool.py: a window's result leaves the cycle after its last beat


def _requantize(node, acc, tout):
    rq = node.requant
    return intops.requantize(acc, rq.m0, rq.shift, tout.qtype.zero_point, rq.lo, rq.hi, node.rounding)


class _WindowPool(Op):
    """A pool over KH x KW windows: verification of the window, stage work, window + engine."""
    stage_kind = None

    def _check_shape(self, node, inp, out):
        ho, wo = check_window(node, inp, node.kernel, node.stride, node.padding)
        if out.shape != (ho, wo, inp.shape[2]):
            fail(node, f"output {out.name!r} has shape {out.shape}, expected {(ho, wo, inp.shape[2])}")

    def stage(self, graph, node):
        ho, wo, c = graph.tensors[node.output].shape
        return Stage(node.name, self.stage_kind, c, node.kernel[0] * node.kernel[1], ho * wo,
                     a_bits=graph.tensors[node.input].qtype.bits)

    def estimate(self, graph, node, work, fold, m):
        return estimate.stage_resources(work, fold, m, graph.m_bits) + window_estimate(graph, node, fold, m)

    def macs(self, graph, node):
        return 0

    def latency(self, graph, node, stage):
        """The sliding window's (`window_latency`), or the pool engine's: 1 cycle from the last
        beat of a window's fold to its result (hw/pool.py)."""
        window = window_latency(stage)
        return window if window is not None else POOL_LATENCY

    def lower_pool(self, lw, node, fold, work, pad_value, engine, params):
        tin = lw.graph.tensors[node.input]
        win = window_stage(lw, node, fold, pad_value)
        s = lw.stage(node, "", kind=self.stage_kind, engine=engine, params=params, in_per_beat=fold.simd,
                     out_per_beat=fold.simd, cycles=work.cycles(fold), fold=fold)
        lw.edge(f"{win.name}.o", f"{s.name}.i", fold.simd, fold.simd, lw.element(tin.qtype),
                tensor=node.input + "#windows")
        return f"{s.name}.o", fold.simd


class MaxPoolOp(_WindowPool):
    node_type = MaxPool
    type_preserving = True
    stage_kind = "maxpool"

    def verify(self, graph, node, inp, out):
        self._check_shape(node, inp, out)
        if out.qtype != inp.qtype:
            fail(node, "MaxPool output type must equal its input type")
        check_clamp(node, out.qtype.qmin if node.lo is None else node.lo,
                    out.qtype.qmax if node.hi is None else node.hi, out)

    def reference(self, node, xs, tin, tout):
        q = tin.qtype
        y = windows(xs[0], node.kernel, node.stride, node.padding, q.qmin).max(axis=(3, 4))
        lo = q.qmin if node.lo is None else node.lo
        hi = q.qmax if node.hi is None else node.hi
        return intops.clamp(y, lo, hi)

    def float_forward(self, fnode, xs):
        return float_windows(xs[0], fnode.kernel, fnode.stride, fnode.padding, -np.inf).max(axis=(3, 4))

    def from_float(self, fnode, tensors, fixed, m_bits):
        from .common import clamp_bounds
        lo, hi = clamp_bounds(fnode.act, tensors[fnode.output].qtype)
        return MaxPool(name=fnode.name, input=fnode.inputs[0], output=fnode.output, kernel=tuple(fnode.kernel),
                       stride=tuple(fnode.stride), padding=tuple(fnode.padding), lo=lo, hi=hi)

    def lower(self, lw, node, fold, work):
        tin = lw.graph.tensors[node.input]
        params = dict(shape=lw.element(tin.qtype), window=node.kernel[0] * node.kernel[1], channels=tin.shape[2],
                      simd=fold.simd, lo=node.lo, hi=node.hi)
        return self.lower_pool(lw, node, fold, work, tin.qtype.qmin, "MaxPool", params)

    def qdq(self, writer, node, x):
        q = writer.g.tensors[node.output].qtype
        y = writer.op("MaxPool", [x], f"{node.output}_float", **writer.window(node))
        lo, hi = (q.qmin if node.lo is None else node.lo), (q.qmax if node.hi is None else node.hi)
        if lo > q.qmin or hi < q.qmax:             # otherwise the input's codes already fit
            y = writer.clamp(node.output, lo, hi, y)
        return y

    def torch_forward(self, net, fnode, xs):
        import torch.nn.functional as F
        return F.max_pool2d(net.pad(xs[0], fnode.padding, float("-inf")), tuple(fnode.kernel), tuple(fnode.stride))


def requant_choice(node, work, fold, family):
    """How an average pool's engine requantizes (`estimate.choose_const_requant`): the same
    choice for its estimate and its lowering."""
    rq = node.requant
    return estimate.choose_const_requant(work, fold, family, levels=int(rq.hi) - int(rq.lo),
                                         multipliers=[int(rq.m0[0])])


def _pool_params(lw, node, fold, work):
    """Requantization parameters of an average pool's engine."""
    graph = lw.graph
    tin, tout = graph.tensors[node.input], graph.tensors[node.output]
    params = dict(shape=lw.element(tin.qtype), channels=tin.shape[2], zero_point=tin.qtype.zero_point,
                  multiplier=int(node.requant.m0[0]), shift=int(node.requant.shift[0]),
                  out_shape=lw.element(tout.qtype), out_zero_point=tout.qtype.zero_point,
                  lo=node.requant.lo, hi=node.requant.hi, simd=fold.simd, rounding=node.rounding)
    if work is not None:
        choice = requant_choice(node, work, fold, lw.policy.family)
        if choice.mode != "multiply":      # the engine's default
            params["requant"] = choice.mode
    return params


def _pool_estimate(graph, node, work, fold, m):
    choice = requant_choice(node, work, fold, m.get("target_family", "ice40"))
    return estimate.stage_resources(work, fold, m, graph.m_bits, requant=choice)


class AvgPoolOp(_WindowPool):
    node_type = AvgPool
    stage_kind = "avgpool"

    def verify(self, graph, node, inp, out):
        self._check_shape(node, inp, out)
        check_requant(graph, node, node.requant, 1, node.kernel[0] * node.kernel[1] * x_max(inp), out)
        check_rounding(node)

    def reference(self, node, xs, tin, tout):
        zx = tin.qtype.zero_point
        win = windows(xs[0], node.kernel, node.stride, node.padding, zx)
        acc = (win.astype(np.int64) - zx).sum(axis=(3, 4))
        return _requantize(node, acc, tout)

    def estimate(self, graph, node, work, fold, m):
        return _pool_estimate(graph, node, work, fold, m) + window_estimate(graph, node, fold, m)

    def with_rounding(self, node, rounding):
        """``node`` with the requantization rounding rule ``rounding`` (see `AvgPool`)."""
        return with_rounding(node, rounding)

    def float_forward(self, fnode, xs):
        return float_windows(xs[0], fnode.kernel, fnode.stride, fnode.padding).mean(axis=(3, 4))

    def from_float(self, fnode, tensors, fixed, m_bits):
        tin, tout = tensors[fnode.inputs[0]], tensors[fnode.output]
        k = fnode.kernel[0] * fnode.kernel[1]
        r = requant_ratio(tin.qtype.scale, divide_by=np.float32(tout.qtype.scale) * k)
        return AvgPool(name=fnode.name, input=fnode.inputs[0], output=fnode.output, kernel=tuple(fnode.kernel),
                       stride=tuple(fnode.stride), padding=tuple(fnode.padding),
                       requant=requant_of(fnode, r, tout.qtype, m_bits))

    def macs(self, graph, node):
        return graph.tensors[node.output].size * node.kernel[0] * node.kernel[1]

    def lower(self, lw, node, fold, work):
        tin = lw.graph.tensors[node.input]
        params = dict(_pool_params(lw, node, fold, work), window=node.kernel[0] * node.kernel[1])
        return self.lower_pool(lw, node, fold, work, tin.qtype.zero_point, "AvgPool", params)

    def qdq(self, writer, node, x):
        extra = {"count_include_pad": 1} if any(node.padding) else {}
        y = writer.op("AveragePool", [x], f"{node.output}_float", **writer.window(node), **extra)
        return writer.clamp(node.output, node.requant.lo, node.requant.hi, y)

    def torch_forward(self, net, fnode, xs):
        import torch.nn.functional as F
        return F.avg_pool2d(net.pad(xs[0], fnode.padding), tuple(fnode.kernel), tuple(fnode.stride))


class GlobalAvgPoolOp(Op):
    node_type = GlobalAvgPool

    def verify(self, graph, node, inp, out):
        if len(inp.shape) != 3:
            fail(node, f"input {inp.name!r} must be (H, W, C), not {inp.shape}")
        h, w, c = inp.shape
        if out.shape != (1, 1, c):
            fail(node, f"output {out.name!r} has shape {out.shape}, expected {(1, 1, c)}")
        check_requant(graph, node, node.requant, 1, h * w * x_max(inp), out)
        check_rounding(node)

    def reference(self, node, xs, tin, tout):
        acc = (xs[0].astype(np.int64) - tin.qtype.zero_point).sum(axis=(1, 2), keepdims=True)
        return _requantize(node, acc, tout)

    with_rounding = AvgPoolOp.with_rounding

    def float_forward(self, fnode, xs):
        return xs[0].mean(axis=(1, 2), keepdims=True)

    def from_float(self, fnode, tensors, fixed, m_bits):
        tin, tout = tensors[fnode.inputs[0]], tensors[fnode.output]
        h, w, _ = tin.shape
        r = requant_ratio(tin.qtype.scale, divide_by=np.float32(tout.qtype.scale) * (h * w))
        return GlobalAvgPool(name=fnode.name, input=fnode.inputs[0], output=fnode.output,
                             requant=requant_of(fnode, r, tout.qtype, m_bits))

    def macs(self, graph, node):
        return graph.tensors[node.input].size

    def stage(self, graph, node):
        tin = graph.tensors[node.input]
        h, w, c = tin.shape
        return Stage(node.name, "gap", c, 1, h * w, a_bits=tin.qtype.bits)

    def estimate(self, graph, node, work, fold, m):
        return _pool_estimate(graph, node, work, fold, m)

    def latency(self, graph, node, stage):
        """1 cycle from the map's last beat of a fold to its result (hw/pool.py `GlobalAvgPool`)."""
        return POOL_LATENCY

    def lower(self, lw, node, fold, work):
        h, w, _ = lw.graph.tensors[node.input].shape
        params = dict(_pool_params(lw, node, fold, work), height=h, width=w)
        s = lw.stage(node, "", kind="gap", engine="GlobalAvgPool", params=params, in_per_beat=fold.simd,
                     out_per_beat=fold.simd, cycles=work.cycles(fold), fold=fold)
        lw.connect(node.input, f"{s.name}.i", fold.simd)
        return f"{s.name}.o", fold.simd

    def qdq(self, writer, node, x):
        y = writer.op("GlobalAveragePool", [x], f"{node.output}_float")
        return writer.clamp(node.output, node.requant.lo, node.requant.hi, y)

    def torch_forward(self, net, fnode, xs):
        return xs[0].mean(dim=(2, 3), keepdim=True)
