"""DepthwiseConv2d: a convolution with ``groups = Cin = Cout`` (channel multiplier 1).

The node has the fields and meaning of `Conv2d` (docs/semantics.md, section 4; weights
``(P, C, KH, KW, 1)``), so quantization, the float forward pass, `qfab info`, QDQ export and
training are Conv2d's; what differs is the hardware: a `SlidingWindow` with ``PE`` channels per
beat feeds a VVAU (`qfab.hw.vvau`, FINN's vector-vector-activation unit), which computes each
channel's dot product over its own ``KH x KW`` window, ``PE`` channels at a time. The front-end
(`qfab.compiler.frontends.onnx_import`) makes an ONNX ``Conv`` with ``group = C`` and one output
channel per group this node; other grouped convolutions stay `Conv2d` (exact in the reference, no
hardware engine).

The stage's work is counted like an MVAU's with ``n = C`` outputs of ``k = KH * KW`` inputs per
pixel and SIMD 1: ``HO * WO * (C / PE) * KH * KW`` cycles (times ``a_bits`` bit-serially), which is
also what the sliding window in front needs to emit a window at ``PE`` channels per beat, so more
SIMD lanes over the window positions would not make the layer faster (the VVAU has them, for a
wider producer).
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from qfab.base.errors import QfabError

from .. import estimate
from ..plan import Stage
from .common import fail, windows
from .conv2d import Conv2d, Conv2dOp, window_latency, window_stage
from .matrix import mac_engine_latency, multiply_options, requant_timing

__all__ = ["DepthwiseConv2d", "DepthwiseConv2dOp"]


@dataclass(frozen=True, eq=False)
class DepthwiseConv2d(Conv2d):
    """Depthwise 2-D convolution: ``groups = Cin = Cout``; weights ``(P, C, KH, KW, 1)``, channels-last."""


class DepthwiseConv2dOp(Conv2dOp):
    node_type = DepthwiseConv2d

    # ---- IR -----------------------------------------------------------------------------------
    def verify(self, graph, node, inp, out):
        super().verify(graph, node, inp, out)
        c = inp.shape[2]
        if node.groups != c or node.out_channels != c:
            fail(node, f"a depthwise convolution has groups = input channels = output channels ({c}), "
                       f"not groups={node.groups} and {node.out_channels} output channels")

    def reference(self, node, xs, tin, tout):
        zx = tin.qtype.zero_point
        win = windows(xs[0], node.kernel, node.stride, node.padding, zx).astype(np.int64) - zx  # (B,HO,WO,KH,KW,C)
        dots = np.einsum("byxijc,pcij->pbyxc", win, node.weights[..., 0].astype(np.int64), optimize=True)
        return node.requant.apply(self.accumulate(node, dots), tout.qtype.zero_point, node.rounding)

    # ---- float graph and quantization: Conv2d's (float_forward, from_float, node_fields) -------
    # ---- info: Conv2d's (macs: points * output size * KH * KW; params) --------------------------

    # ---- hardware -----------------------------------------------------------------------------
    def stage(self, graph, node):
        if node.points != 1:
            raise QfabError(f"node {node.name!r}: a multipoint depthwise convolution ({node.points} points) "
                            "has no hardware engine")
        tin, tout = graph.tensors[node.input], graph.tensors[node.output]
        ho, wo, c = tout.shape
        return Stage(node.name, "mvau", c, node.fan_in, ho * wo, 1, 1, node.w_type.bits, tin.qtype.bits)

    def estimate(self, graph, node, work, fold, m):
        tin = graph.tensors[node.input]
        h, w, c = tin.shape
        shifts = [int(v) for v in node.requant.shift]
        engine = estimate.resources(estimate.vvau_terms(work, fold, m, m_bits=graph.m_bits, shifts=shifts), m)
        options = multiply_options(m.get("target_family", "ice40"))
        if "dsp_width" in options:
            engine = engine + estimate.dsp_piece_resources(work, fold, m_bits=graph.m_bits, m=m,
                                                           cells="dsp_cell" in options)
        return engine + estimate.window_resources(h, w, c, node.kernel, node.stride, tin.qtype.bits, fold.pe, m)

    def lower(self, lw, node, fold, work):
        if fold.simd != 1:
            raise QfabError(f"node {node.name!r}: a depthwise convolution takes SIMD 1 (its window sends "
                            f"one position per beat), not {fold.simd}")
        tin = lw.graph.tensors[node.input]
        win = window_stage(lw, node, dataclasses.replace(fold, simd=fold.pe), tin.qtype.zero_point)
        s = self.vvau(lw, node, fold, work)
        lw.edge(f"{win.name}.o", f"{s.name}.i", fold.pe, fold.pe, lw.element(tin.qtype),
                tensor=node.input + "#windows")
        return f"{s.name}.o", fold.pe

    def vvau(self, lw, node, fold, work):
        """Add the node's VVAU stage to the plan; its input port is ``<stage>.i``."""
        c, k = node.out_channels, node.fan_in
        params = self.engine_params(lw, node, fold, work, node.weights[0].reshape(c, k).tolist())
        params.update(multiply_options(lw.policy.family))    # the VVAU always multiplies
        return lw.stage(node, "", kind="vvau", engine="VVAU", params=params, in_per_beat=fold.pe,
                        out_per_beat=fold.pe, cycles=work.cycles(fold), fold=fold, buffered=k * c + 2 * fold.pe)

    # ---- latency (qfab.compiler.latency) --------------------------------------------------------
    def latency(self, graph, node, stage):
        """The sliding window's, or the VVAU's: as the MVAU's (`mac_engine_latency`), with its
        `Requant` multiplying (5 cycles, and the family's `multiply_options`: 2 more for DSP
        pieces) and no point sum (the VVAU has no ``latency`` property)."""
        window = window_latency(stage)
        return window if window is not None else mac_engine_latency(stage.params, requant_timing(stage.params)[0])

    def output_interval(self, graph, node, stage):
        return 1

    # ---- export and training: Conv2d's (qdq: an ONNX Conv with group = C; torch_forward) --------
