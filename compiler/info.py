"""Per-layer facts of an IR graph: shapes, bits, parameter memory, MACs."""

from dataclasses import dataclass

import numpy as np

from .ir import AvgPool, Conv2d, Dense, GlobalAvgPool

__all__ = ["LayerInfo", "layer_table", "format_table"]


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str
    in_shape: tuple
    out_shape: tuple
    w_bits: str
    a_bits: str
    out_bits: str
    params: int
    param_bits: int        # weights (every point) + bias (32) + requant constants
    macs: int


def _macs(node, graph):
    out = graph.tensors[node.output]
    if isinstance(node, Dense):
        return node.points * node.out_channels * node.fan_in
    if isinstance(node, Conv2d):
        return node.points * out.size * node.fan_in
    if isinstance(node, AvgPool):
        return out.size * node.kernel[0] * node.kernel[1]
    if isinstance(node, GlobalAvgPool):
        return graph.tensors[node.input].size
    return 0


def layer_table(graph):
    rows = []
    for node in graph.nodes:
        tin = graph.tensors[node.inputs[0]]
        tout = graph.tensors[node.output]
        params = param_bits = 0
        w_bits = "-"
        if isinstance(node, (Dense, Conv2d)):
            params = int(node.weights.size + node.bias.size)
            c = node.out_channels
            param_bits = int(node.weights.size * node.w_type.bits + c * 32 + c * (graph.m_bits + 6))
            if node.points > 1:
                param_bits += int(node.multipliers.size * 16)
            w_bits = node.w_type.describe() + (f" x{node.points}pt" if node.points > 1 else "")
        a_bits = "/".join(graph.tensors[i].qtype.describe() for i in node.inputs)
        rows.append(LayerInfo(node.name, node.kind, tuple(tin.shape), tuple(tout.shape), w_bits, a_bits,
                              tout.qtype.describe(), params, param_bits, _macs(node, graph)))
    return rows


def format_table(graph):
    rows = layer_table(graph)
    head = ("layer", "kind", "input", "output", "w", "a", "out", "params", "param bytes", "MACs")
    body = [(r.name, r.kind, "x".join(map(str, r.in_shape)), "x".join(map(str, r.out_shape)), r.w_bits,
             r.a_bits, r.out_bits, str(r.params), str((r.param_bits + 7) // 8), str(r.macs)) for r in rows]
    body.append(("total", "", "", "", "", "", "", str(sum(r.params for r in rows)),
                 str(sum((r.param_bits + 7) // 8 for r in rows)), str(sum(r.macs for r in rows))))
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
    i = graph.tensors[graph.inputs[0]]
    o = graph.tensors[graph.outputs[0]]
    lines.append(f"input {i.name!r} {i.shape} {i.qtype.describe()} scale {i.qtype.scale:.6g} zp {i.qtype.zero_point}"
                 f" ({graph.input_layout.value} at the boundary); output {o.name!r} {o.shape} "
                 f"{o.qtype.describe()} scale {o.qtype.scale:.6g} zp {o.qtype.zero_point}; m_bits {graph.m_bits}")
    return "\n".join(lines)
