"""Conv2d: a 2-D convolution, channels-last; weights ``(P, Cout, KH, KW, Cin / groups)``.

In hardware a `SlidingWindow` (padding with the input's zero point) feeds an MVAU. A layer whose
input row is small (W * C <= 512 elements: a first layer) may instead take whole windows from a
`WideWindow`, one or ``pixels`` output pixels per beat into ``pixels`` copies of a fully unfolded
MVAU (FINN's MMV), so that few input channels do not floor it at KH * KW cycles per output pixel.
Depthwise convolutions are `DepthwiseConv2d` (a VVAU); other grouped ones have no engine.
"""

from dataclasses import dataclass

import numpy as np

from qfab.base.errors import QfabError

from .. import estimate
from ..ir import _MatNode
from ..plan import Stage
from .common import check_window, exact_int, fail, windows
from .matrix import MatrixOp

__all__ = ["Conv2d", "Conv2dOp", "line_buffer", "window_stage", "window_latency", "float_windows"]


@dataclass(frozen=True, eq=False)
class Conv2d(_MatNode):
    """2-D convolution; weights ``(P, Cout, KH, KW, Cin / groups)``, channels-last."""
    stride: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)    # top, left, bottom, right
    groups: int = 1

    @property
    def kernel(self):
        return tuple(int(k) for k in self.weights.shape[2:4])


def line_buffer(tin, kernel, stride):
    """Elements a sliding window holds before it emits (its line buffer)."""
    h, w, c = tin.shape
    return min(kernel[0] + stride[0], h) * w * c


def window_stage(lw, node, fold, pad_value):
    """Add the `SlidingWindow` in front of a window operator (convolution or pool); return it."""
    tin = lw.graph.tensors[node.input]
    h, w, c = tin.shape
    params = dict(shape=lw.element(tin.qtype), height=h, width=w, channels=c, kernel=tuple(node.kernel),
                  stride=tuple(node.stride), padding=tuple(node.padding), pad_value=pad_value, simd=fold.simd)
    win = lw.stage(node, "_window", kind="window", engine="SlidingWindow", params=params,
                   in_per_beat=fold.simd, out_per_beat=fold.simd, buffered=line_buffer(tin, node.kernel, node.stride))
    lw.connect(node.input, f"{win.name}.i", fold.simd)
    return win


WINDOW_LATENCY = 2     # hw/window.py: a window's first beat leaves 2 cycles after the input beat completing its rows

WIDE_WINDOW_LATENCY = 2   # hw/wide_window.py: WideWindow.latency
WIDE_ROW_LIMIT = 512   # input row elements (W * C) up to which a convolution may take whole windows (WideWindow)


def wide(fold, work):
    """Whether ``fold`` of a convolution stage takes whole windows per beat (a `WideWindow`)."""
    return fold.pixels > 1 or (work is not None and fold.simd > work.simd_of)


def wide_in_pixels(tin, tout, pixels):
    """Input pixels per beat of a `WideWindow` emitting ``pixels`` output pixels per beat: the
    fewest (dividing W) that bring the input in no slower than the windows leave."""
    h, w, _ = tin.shape
    ho, wo, _ = tout.shape
    need = -(-pixels * h * w // (ho * wo))
    return next(d for d in range(1, w + 1) if w % d == 0 and d >= min(need, w))


def wide_window_stage(lw, node, fold, pad_value):
    """Add the `WideWindow` in front of a convolution taking whole windows; return it."""
    tin, tout = lw.graph.tensors[node.input], lw.graph.tensors[node.output]
    h, w, c = tin.shape
    in_pixels = wide_in_pixels(tin, tout, fold.pixels)
    kh, kw = node.kernel
    params = dict(shape=lw.element(tin.qtype), height=h, width=w, channels=c, kernel=tuple(node.kernel),
                  stride=tuple(node.stride), padding=tuple(node.padding), pad_value=pad_value,
                  pixels=fold.pixels, in_pixels=in_pixels)
    win = lw.stage(node, "_window", kind="window", engine="WideWindow", params=params,
                   in_per_beat=in_pixels * c, out_per_beat=fold.pixels * kh * kw * c,
                   buffered=line_buffer(tin, node.kernel, node.stride))
    lw.connect(node.input, f"{win.name}.i", in_pixels * c)
    return win


def window_latency(stage):
    """The `SlidingWindow`'s latency: its first beat of a window leaves 2 cycles after the input
    beat that completes the rows the window needs (None for a stage that is not a window)."""
    return WINDOW_LATENCY if stage.engine == "SlidingWindow" else None


def window_estimate(graph, node, fold, m):
    """Estimated `Resources` of the `SlidingWindow` in front of ``node``."""
    tin = graph.tensors[node.input]
    h, w, c = tin.shape
    return estimate.window_resources(h, w, c, node.kernel, node.stride, tin.qtype.bits, fold.simd, m)


def float_windows(x, kernel, stride, padding, value=0.0):
    return windows(x, kernel, stride, padding, value)


class Conv2dOp(MatrixOp):
    node_type = Conv2d
    weight_ndim = 5

    def verify(self, graph, node, inp, out):
        super().verify(graph, node, inp, out)
        _, cout, kh, kw, cg = node.weights.shape
        ho, wo = check_window(node, inp, (kh, kw), node.stride, node.padding)
        g = node.groups
        if not isinstance(g, int) or g < 1 or cout % g or inp.shape[2] != g * cg:
            fail(node, f"groups={g} does not fit input channels {inp.shape[2]}, "
                       f"output channels {cout} and weight shape {node.weights.shape[1:]}")
        if out.shape != (ho, wo, cout):
            fail(node, f"output {out.name!r} has shape {out.shape}, expected {(ho, wo, cout)}")

    def reference(self, node, xs, tin, tout):
        zx = tin.qtype.zero_point
        win = windows(xs[0], node.kernel, node.stride, node.padding, zx)
        b, ho, wo, kh, kw, c = win.shape
        g, cout, p = node.groups, node.out_channels, node.points
        cols = (win.astype(np.float64) - zx)
        if g == 1:
            cols = cols.reshape(b * ho * wo, kh * kw * c)
            rows = node.weight_rows().astype(np.float64)               # (P, Cout, fan_in)
            dots = np.stack([exact_int(cols @ rows[q].T) for q in range(p)])
        else:
            cg = c // g
            cols = cols.reshape(b * ho * wo, kh, kw, g, cg)
            w = node.weights.astype(np.float64).reshape(p, g, cout // g, kh, kw, cg)
            dots = exact_int(np.einsum("nyxgc,pgoyxc->pngo", cols, w, optimize=True))
        dots = dots.reshape(p, b, ho, wo, cout)
        return node.requant.apply(self.accumulate(node, dots), tout.qtype.zero_point, node.rounding)

    def float_forward(self, fnode, xs):
        x = xs[0]
        win = float_windows(x, fnode.weight.shape[1:3], fnode.stride, fnode.padding)
        b, ho, wo, kh, kw, c = win.shape
        g = fnode.groups
        cout = fnode.weight.shape[0]
        cols = win.reshape(b * ho * wo, kh, kw, g, c // g)
        w = fnode.weight.reshape(g, cout // g, kh, kw, c // g)
        y = np.einsum("nyxgc,goyxc->ngo", cols, w, optimize=True).reshape(b, ho, wo, cout)
        return y + fnode.bias

    def node_fields(self, fnode):
        return dict(stride=tuple(fnode.stride), padding=tuple(fnode.padding), groups=fnode.groups)

    def macs(self, graph, node):
        return node.points * graph.tensors[node.output].size * node.fan_in

    def stage(self, graph, node):
        if node.groups != 1:
            raise QfabError(f"node {node.name!r}: grouped convolution (groups={node.groups}) has no hardware "
                            "engine (a depthwise one, groups = channels, is built as DepthwiseConv2d)")
        tin, tout = graph.tensors[node.input], graph.tensors[node.output]
        ho, wo, _ = tout.shape
        h, w, c = tin.shape
        small = w * c <= WIDE_ROW_LIMIT and c < node.fan_in      # a first layer may take whole windows
        return Stage(node.name, "mvau", node.out_channels, node.fan_in, ho * wo, node.points, c,
                     node.w_type.bits, tin.qtype.bits, row_pixels=wo if small else 0)

    def estimate(self, graph, node, work, fold, m):
        engine = self.engine_estimate(graph, node, work, fold, m)
        if not wide(fold, work):
            return engine + window_estimate(graph, node, fold, m)
        for _ in range(fold.pixels - 1):          # pixels copies of the fully unfolded MVAU
            engine = engine + self.engine_estimate(graph, node, work, fold, m)
        tin, tout = graph.tensors[node.input], graph.tensors[node.output]
        h, w, c = tin.shape
        return engine + estimate.wide_window_resources(h, w, c, node.kernel, node.stride, tin.qtype.bits,
                                                       fold.pixels, wide_in_pixels(tin, tout, fold.pixels), m)

    def input_per_beat(self, graph, node, fold, work):
        if not wide(fold, work):
            return fold.simd
        tin, tout = graph.tensors[node.input], graph.tensors[node.output]
        return wide_in_pixels(tin, tout, fold.pixels) * tin.shape[2]

    def lower(self, lw, node, fold, work):
        if node.groups != 1:
            raise QfabError(f"node {node.name!r}: grouped convolution has no hardware engine yet")
        tin = lw.graph.tensors[node.input]
        if wide(fold, work):
            win = wide_window_stage(lw, node, fold, tin.qtype.zero_point)
        else:
            win = window_stage(lw, node, fold, tin.qtype.zero_point)
        s = self.mvau(lw, node, fold, work)
        per_beat = fold.simd * fold.pixels
        lw.edge(f"{win.name}.o", f"{s.name}.i", per_beat, per_beat, lw.element(tin.qtype),
                tensor=node.input + "#windows")
        return f"{s.name}.o", fold.pe * fold.pixels

    def latency(self, graph, node, stage):
        """The sliding window's (`window_latency`) or the MVAU's (`MatrixOp.latency`)."""
        if stage.engine == "WideWindow":
            return WIDE_WINDOW_LATENCY
        window = window_latency(stage)
        return window if window is not None else super().latency(graph, node, stage)

    def output_interval(self, graph, node, stage):
        return 1 if stage.kind == "window" else super().output_interval(graph, node, stage)

    def qdq_float(self, writer, node, x, w, b):
        return writer.op("Conv", [x, w, b], f"{node.output}_float", group=node.groups, **writer.window(node))

    def torch_forward(self, net, fnode, xs):
        import torch.nn.functional as F
        w, b = net.quantized_weight(fnode)
        return F.conv2d(net.pad(xs[0], fnode.padding), w, b, stride=tuple(fnode.stride), groups=fnode.groups)
