"""Per-layer facts of an IR graph: shapes, bits, parameter memory, MACs."""

from dataclasses import dataclass

from .ops import op_for

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


def layer_table(graph):
    rows = []
    for node in graph.nodes:
        op = op_for(node)
        tin = graph.tensors[node.inputs[0]]
        tout = graph.tensors[node.output]
        params, param_bits, w_bits = op.params(graph, node)
        a_bits = "/".join(graph.tensors[i].qtype.describe() for i in node.inputs)
        rows.append(LayerInfo(node.name, node.kind, tuple(tin.shape), tuple(tout.shape), w_bits, a_bits,
                              tout.qtype.describe(), params, param_bits, op.macs(graph, node)))
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
