"""Conv2d: a 2-D convolution, channels-last; weights ``(P, Cout, KH, KW, Cin / groups)``.

In hardware a `SlidingWindow` (padding with the input's zero point) feeds an MVAU; grouped and
depthwise convolutions have a reference but no engine yet.
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
        return Stage(node.name, "mvau", node.out_channels, node.fan_in, ho * wo, node.points, tin.shape[2],
                     node.w_type.bits, tin.qtype.bits)

    def estimate(self, graph, node, work, fold, m):
        return self.engine_estimate(graph, node, work, fold, m) + window_estimate(graph, node, fold, m)

    def lower(self, lw, node, fold, work):
        if node.groups != 1:
            raise QfabError(f"node {node.name!r}: grouped convolution has no hardware engine yet")
        tin = lw.graph.tensors[node.input]
        win = window_stage(lw, node, fold, tin.qtype.zero_point)
        s = self.mvau(lw, node, fold, work)
        lw.edge(f"{win.name}.o", f"{s.name}.i", fold.simd, fold.simd, lw.element(tin.qtype),
                tensor=node.input + "#windows")
        return f"{s.name}.o", fold.pe

    def latency(self, graph, node, stage):
        """The sliding window's (`window_latency`) or the MVAU's (`MatrixOp.latency`)."""
        window = window_latency(stage)
        return window if window is not None else super().latency(graph, node, stage)

    def output_interval(self, graph, node, stage):
        return 1 if stage.engine == "SlidingWindow" else super().output_interval(graph, node, stage)

    def qdq_float(self, writer, node, x, w, b):
        return writer.op("Conv", [x, w, b], f"{node.output}_float", group=node.groups, **writer.window(node))

    def torch_forward(self, net, fnode, xs):
        import torch.nn.functional as F
        w, b = net.quantized_weight(fnode)
        return F.conv2d(net.pad(xs[0], fnode.padding), w, b, stride=tuple(fnode.stride), groups=fnode.groups)
