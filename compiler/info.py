"""Per-layer facts of an IR graph: shapes, bits, parameter memory, MACs; and of a float model
(structure only, no calibration needed: `format_float_table`)."""

import dataclasses
from dataclasses import dataclass

from .ops import op_for

__all__ = ["LayerInfo", "layer_table", "format_table", "float_layer_table", "format_float_table", "float_info"]


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


def _structure_graph(fg):
    """An IR graph with the structure of float graph ``fg`` (placeholder 8-bit types and weights),
    so that each operator's own ``macs`` and ``params`` count it."""
    from .build import build_graph
    from .calibrate import bias_scale_floor, quantize_weight_rows
    from .fgraph import FixedWeights
    from .ir import QType
    qtypes = {t: QType(8, False, 1.0, 0) for t in fg.shapes}
    weights = {}
    for node in fg.nodes:
        if op_for(node.kind).weighted:
            w_int, scales = quantize_weight_rows(node.weight, 8, search=False,
                                                 min_scales=bias_scale_floor(node.bias, 1.0))
            weights[node.name] = FixedWeights(w_int=w_int, scales=scales, bits=8, signed=True, b_int=None)
    return build_graph(fg, qtypes, weights, metadata={"source": "structure"})


def float_layer_table(fg):
    """`LayerInfo` rows of float graph ``fg``: shapes, parameters and MACs; bits are "float" and
    ``param_bits`` counts 32-bit floats."""
    rows = []
    for row in layer_table(_structure_graph(fg)):
        weighted = row.w_bits != "-"
        rows.append(dataclasses.replace(row, w_bits="float" if weighted else "-", a_bits="float", out_bits="float",
                                        param_bits=32 * row.params))
    return rows


def format_float_table(fg):
    """The `format_table` of a float model, before quantization (bits: "float")."""
    return _format(float_layer_table(fg), f"float model: input {fg.inputs[0]!r} {fg.shapes[fg.inputs[0]]} "
                   f"{_layout_note(fg.input_layout, fg.shapes[fg.inputs[0]])}, output {fg.outputs[0]!r} "
                   f"{fg.shapes[fg.outputs[0]]}; give calibration data (--calib) to see the quantized types")


def float_info(path):
    """`format_float_table` of ONNX model ``path`` if it is a float model, else None."""
    import pathlib
    if pathlib.Path(path).suffix != ".onnx":
        return None
    from .frontends.onnx_import import import_onnx
    from .load import is_quantized_onnx
    fg = import_onnx(path)
    return None if is_quantized_onnx(fg) else format_float_table(fg)


def format_table(graph):
    i = graph.tensors[graph.inputs[0]]
    o = graph.tensors[graph.outputs[0]]
    return _format(layer_table(graph),
                   f"input {i.name!r} {i.shape} {i.qtype.describe()} scale {i.qtype.scale:.6g} zp {i.qtype.zero_point}"
                   f"{_layout_note(graph.input_layout, i.shape)}; output {o.name!r} {o.shape} "
                   f"{o.qtype.describe()} scale {o.qtype.scale:.6g} zp {o.qtype.zero_point}; "
                   f"requantization multipliers of {graph.m_bits} bits")


def _layout_note(layout, shape):
    """How an image input is laid out (nothing for a vector: there is no layout to choose)."""
    if len(shape) != 3:
        return ""
    return (" (images: NCHW in the model, channels-last (H, W, C) inside qfab)" if layout.value == "NCHW"
            else " (images: channels-last (H, W, C))")


def _format(rows, footer):
    head = ("layer", "kind", "input", "output", "w", "a", "out", "params", "param bytes", "MACs")
    body = [(r.name, r.kind, "x".join(map(str, r.in_shape)), "x".join(map(str, r.out_shape)), r.w_bits,
             r.a_bits, r.out_bits, str(r.params), str((r.param_bits + 7) // 8), str(r.macs)) for r in rows]
    body.append(("total", "", "", "", "", "", "", str(sum(r.params for r in rows)),
                 str(sum((r.param_bits + 7) // 8 for r in rows)), str(sum(r.macs for r in rows))))
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
    lines.append(footer)
    return "\n".join(lines)
