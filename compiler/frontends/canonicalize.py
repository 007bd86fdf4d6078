"""Canonicalization: rewrite what exporters write into the one form the importer reads.

Runs on the `onnx.ModelProto` before the importer walks it (`onnx_load.OnnxModel` calls it), each
rewrite a small function over the graph, in this order:

1. initializers that are also listed as graph inputs (IR version 3, the ONNX zoo) are constants;
   ``Constant`` nodes become initializers;
2. every node whose inputs are all constants is evaluated with ONNX's own reference evaluator
   (`onnx.reference.ReferenceEvaluator`) and replaced by its result: a Reshape of a weight, a
   QuantizeLinear of a float weight, Shape/Gather/Concat chains. A ``DequantizeLinear`` of a constant
   stays (qfab reads the integer codes behind it), and a shape operator over one moves onto its
   integer codes (``Reshape(DQ(q)) -> DQ(Reshape(q))``, per-tensor scale). Custom-domain nodes (QONNX)
   are never evaluated here;
3. ``auto_pad=SAME_UPPER/SAME_LOWER/VALID`` becomes explicit ``pads``;
4. a Gemm bias of shape ``(1, N)`` becomes ``(N,)``;
5. ``ReduceMean`` over H and W of an ``(N, C, H, W)`` tensor becomes ``GlobalAveragePool`` (then a
   ``Flatten`` if ``keepdims=0``); ``Squeeze`` of an ``(N, C, 1, 1)`` tensor becomes ``Flatten``.

Unused initializers are dropped at the end. Each rewrite that changed something adds a note.
"""

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

__all__ = ["canonicalize"]

KEEP_DOMAINS = ("", "ai.onnx")
SHAPE_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")
WINDOW_OPS = ("Conv", "MaxPool", "AveragePool", "QLinearConv", "ConvInteger")


class _Graph:
    """The graph being rewritten: constants by name, shapes from shape inference."""

    def __init__(self, model):
        self.model = model
        self.g = model.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in self.g.initializer}
        self.opsets = {o.domain or "": o.version for o in model.opset_import}
        self.notes = []

    def set_const(self, name, value):
        value = np.asarray(value)
        self.consts[name] = value
        for i, t in enumerate(self.g.initializer):
            if t.name == name:
                self.g.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
                return
        self.g.initializer.append(numpy_helper.from_array(value, name))

    def shapes(self):
        inferred = shape_inference.infer_shapes(self.model, strict_mode=False).graph
        out = {}
        for vi in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        for name, value in self.consts.items():
            out[name] = list(value.shape)
        return out

    def attr(self, node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def set_attr(self, node, name, value):
        drop_attr(node, name)
        node.attribute.append(helper.make_attribute(name, value))


def drop_attr(node, name):
    keep = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(keep)


def _initializer_inputs(gr):
    listed = [vi for vi in gr.g.input if vi.name in gr.consts]
    if listed:
        keep = [vi for vi in gr.g.input if vi.name not in gr.consts]
        del gr.g.input[:]
        gr.g.input.extend(keep)
        gr.notes.append(f"{len(listed)} initializers listed as graph inputs are read as constants")


def _constant_nodes(gr):
    keep = []
    for node in gr.g.node:
        if node.op_type == "Constant" and node.domain in KEEP_DOMAINS and len(node.attribute) == 1:
            a = node.attribute[0]
            value = helper.get_attribute_value(a)
            if a.name == "value":
                gr.set_const(node.output[0], numpy_helper.to_array(value))
                continue
            if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                dtype = np.float32 if "float" in a.name else np.int64
                gr.set_const(node.output[0], np.asarray(value, dtype))
                continue
        keep.append(node)
    del gr.g.node[:]
    gr.g.node.extend(keep)


def _evaluate(gr, node):
    from onnx.reference import ReferenceEvaluator
    opsets = {d: v for d, v in gr.opsets.items() if d in KEEP_DOMAINS}
    feeds = {name: gr.consts[name] for name in node.input if name}
    outs = ReferenceEvaluator(node, opsets=opsets or {"": 13}).run(None, feeds)
    return dict(zip(node.output, outs))


def _dq_of_const(gr, producers, name):
    node = producers.get(name)
    if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in gr.consts:
        return None
    if any(i and i not in gr.consts for i in node.input[1:]):
        return None
    return node


def _fold(gr):
    """Evaluate every node whose inputs are constants (not DequantizeLinear, not custom ops)."""
    producers = {}
    kept, folded = [], 0
    for node in gr.g.node:
        inputs = [i for i in node.input if i]
        if node.domain not in KEEP_DOMAINS or node.op_type == "DequantizeLinear" or not node.output:
            kept.append(node)
        elif node.op_type in SHAPE_OPS and inputs and (dq := _dq_of_const(gr, producers, node.input[0])) \
                and all(i in gr.consts for i in inputs[1:]) and gr.consts[dq.input[1]].size == 1:
            moved = onnx.NodeProto()
            moved.CopyFrom(node)
            moved.input[0] = dq.input[0]
            codes = node.output[0] + "_codes"
            gr.set_const(codes, _evaluate(gr, moved)[moved.output[0]])
            new = helper.make_node("DequantizeLinear", [codes, *dq.input[1:]], [node.output[0]],
                                   name=(node.name or codes) + "_dq")
            kept.append(new)
            folded += 1
            node = new
        elif inputs and all(i in gr.consts for i in inputs) and not any(
                a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            for name, value in _evaluate(gr, node).items():
                gr.set_const(name, value)
            folded += 1
            continue
        else:
            kept.append(node)
        for out in node.output:
            producers[out] = node
    if folded:
        del gr.g.node[:]
        gr.g.node.extend(kept)
        gr.notes.append(f"folded {folded} nodes that compute only on constants")


def _same_pads(in_hw, kernel, strides, dilations, mode):
    pads_begin, pads_end = [], []
    for i, k, s, d in zip(in_hw, kernel, strides, dilations):
        out = -(-i // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - i, 0)
        small = total // 2
        begin = small if mode == "SAME_UPPER" else total - small
        pads_begin.append(begin)
        pads_end.append(total - begin)
    return pads_begin + pads_end


def _auto_pad(gr):
    nodes = [n for n in gr.g.node if n.op_type in WINDOW_OPS and n.domain in KEEP_DOMAINS]
    todo = [n for n in nodes if (gr.attr(n, "auto_pad", b"NOTSET") or b"NOTSET") not in (b"NOTSET", "NOTSET")]
    if not todo:
        return
    shapes = gr.shapes()
    for node in todo:
        mode = gr.attr(node, "auto_pad")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        x = shapes.get(node.input[0])
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            w = shapes.get(node.input[3 if node.op_type == "QLinearConv" else 1])
            kernel = gr.attr(node, "kernel_shape") or (w[2:] if w else None)
        else:
            kernel = gr.attr(node, "kernel_shape")
        if x is None or kernel is None or any(d is None for d in x[2:]):
            continue              # the importer reports the auto_pad it cannot read
        n = len(kernel)
        strides = gr.attr(node, "strides") or [1] * n
        dilations = gr.attr(node, "dilations") or [1] * n
        pads = [0] * (2 * n) if mode == "VALID" else _same_pads(x[2:], kernel, strides, dilations, mode)
        drop_attr(node, "auto_pad")
        gr.set_attr(node, "pads", [int(p) for p in pads])
        gr.notes.append(f"{node.op_type} {node.name!r}: auto_pad={mode} written as pads={pads}")


def _gemm_bias(gr):
    for node in gr.g.node:
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] in gr.consts:
            c = gr.consts[node.input[2]]
            if c.ndim == 2 and c.shape[0] == 1:
                name = node.input[2] + "_row"
                gr.set_const(name, c.reshape(-1))
                node.input[2] = name


def _axes(gr, node):
    if len(node.input) > 1 and node.input[1]:
        return None if node.input[1] not in gr.consts else [int(a) for a in gr.consts[node.input[1]].reshape(-1)]
    return gr.attr(node, "axes")


def _pools_and_squeezes(gr):
    shapes = None
    out = []
    squeezed = {}                 # output -> Squeeze of one unit axis of an (N, C, 1, 1) map
    uses = {}
    for node in gr.g.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for node in gr.g.node:
        if node.op_type in ("ReduceMean", "Squeeze") and node.domain in KEEP_DOMAINS:
            shapes = shapes or gr.shapes()
            rank = len(shapes.get(node.input[0]) or [])
            axes = _axes(gr, node)
            if node.op_type == "ReduceMean" and rank == 4 and axes is not None \
                    and sorted(a % 4 for a in axes) == [2, 3]:
                keep = gr.attr(node, "keepdims", 1)
                pooled = node.output[0] if keep else node.output[0] + "_pooled"
                out.append(helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name))
                if not keep:
                    out.append(helper.make_node("Flatten", [pooled], [node.output[0]], name=node.name + "_flatten",
                                                axis=1))
                gr.notes.append(f"ReduceMean {node.name!r} over H and W read as GlobalAveragePool")
                continue
            shape = shapes.get(node.input[0]) or []
            if node.op_type == "Squeeze" and rank == 4 and shape[2:] == [1, 1] and \
                    (axes is None or sorted(a % 4 for a in axes) == [2, 3]):
                out.append(helper.make_node("Flatten", [node.input[0]], [node.output[0]], name=node.name, axis=1))
                continue
            first = squeezed.get(node.input[0])
            if node.op_type == "Squeeze" and first is not None and uses.get(node.input[0]) == 1 \
                    and len(shapes.get(node.output[0]) or []) == 2:
                out.remove(first)         # x.squeeze(3).squeeze(2): one Flatten of the (N, C, 1, 1) map
                out.append(helper.make_node("Flatten", [first.input[0]], [node.output[0]], name=node.name, axis=1))
                continue
            if node.op_type == "Squeeze" and rank == 4 and shape[2:] == [1, 1]:
                squeezed[node.output[0]] = node
        out.append(node)
    del gr.g.node[:]
    gr.g.node.extend(out)


def _drop_unused(gr):
    used = {i for n in gr.g.node for i in n.input} | {o.name for o in gr.g.output}
    keep = [t for t in gr.g.initializer if t.name in used]
    if len(keep) != len(gr.g.initializer):
        del gr.g.initializer[:]
        gr.g.initializer.extend(keep)
    vis = [vi for vi in gr.g.value_info if vi.name in used]
    del gr.g.value_info[:]
    gr.g.value_info.extend(vis)


def canonicalize(model):
    """A canonical copy of ``model`` (an `onnx.ModelProto`) and the list of notes on what changed."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    gr = _Graph(copy)
    copy.ir_version = max(copy.ir_version, 4)     # from IR version 4 on initializers need not be inputs
    for step in (_initializer_inputs, _constant_nodes, _fold, _auto_pad, _gemm_bias, _pools_and_squeezes,
                 _drop_unused):
        step(gr)
    return copy, gr.notes
