"""IR `Graph` -> QDQ ONNX model (QuantizeLinear / DequantizeLinear around float operators).

The layout onnxruntime's own quantizer writes, so that onnxruntime runs it and
`qfab.compiler.load.load_graph` reads it back to the same integers:

- every activation tensor is ``QuantizeLinear -> DequantizeLinear`` after the operator that
  makes it (also after MaxPool and Flatten, with their input's parameters);
- weights are integer initializers behind a per-output-channel ``DequantizeLinear`` (axis 0),
  biases int32 behind one with scale ``s_in * s_w``;
- codes of at most 8 bits are stored as int8 / uint8; a narrower type is written QCDQ, as
  Brevitas does: ``QuantizeLinear -> Clip(qmin, qmax) -> DequantizeLinear`` for activations and
  ``Clip`` of the integer weight initializer, so the importer reads the width back (u4, i4);
- an output clamp narrower than the type's range (a ReLU on a signed type, a Clip) becomes
  ``Relu`` or ``Clip`` with bounds a quarter step outside the last codes, so that both
  onnxruntime (clip, then round) and the importer (ceil / floor of bound / scale) land on the
  same codes;
- the model property ``qfab.pool_rounding`` records the average pools' rounding rule.

A re-imported graph has the same types (widths included), codes, scales, zero points, integer
weights and clamps: it computes the same outputs code for code. Feature
maps are written NCHW when the graph's input layout is NCHW (Conv weights transposed back, the
weights of a Dense after a Flatten permuted to the channels-first order).
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qfab.base.errors import QfabError

from ..ir import Layout
from ..ops import op_for
from .onnx_qops import ROUNDING_PROP

__all__ = ["qdq_model", "save_qdq"]

OPSET = 17
_QUARTER = 0.25


def _storage(bits, signed):
    if bits > 8:
        raise QfabError(f"{bits}-bit codes do not fit the 8-bit QDQ storage types")
    return (np.int8, TensorProto.INT8) if signed else (np.uint8, TensorProto.UINT8)


class _Writer:
    def __init__(self, graph):
        self.g = graph
        self.nodes, self.inits = [], []
        self.float_of = {}         # IR tensor -> ONNX name of its dequantized (float) value
        self.channels_first = {}   # IR tensor (a flattened feature map) -> permutation
        self.nchw = graph.input_layout is Layout.NCHW

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def qparams(self, tensor):
        q = self.g.tensors[tensor].qtype
        dtype, _ = _storage(q.bits, q.signed)
        scale = self.const(f"{tensor}_scale", np.array(q.scale, np.float32))
        zp = self.const(f"{tensor}_zero_point", np.array(q.zero_point, dtype))
        return scale, zp

    def narrow(self, name, bits, signed, qmin, qmax, codes):
        """QCDQ: a ``Clip`` of the integer ``codes`` to ``[qmin, qmax]`` when that is narrower than
        the 8-bit storage type (how Brevitas writes sub-8-bit types; qfab's importer reads the
        Clip as the narrower type)."""
        if bits >= 8:
            return codes
        dtype, _ = _storage(bits, signed)
        lo = self.const(f"{name}_clip_min", np.array(qmin, dtype))
        hi = self.const(f"{name}_clip_max", np.array(qmax, dtype))
        return self.op("Clip", [codes, lo, hi], f"{name}_qclip")

    def quantize(self, tensor, float_name):
        """``float_name`` -> Q (-> Clip) -> DQ: the float value of IR tensor ``tensor``."""
        scale, zp = self.qparams(tensor)
        qt = self.g.tensors[tensor].qtype
        q = self.op("QuantizeLinear", [float_name, scale, zp], f"{tensor}_q")
        q = self.narrow(tensor, qt.bits, qt.signed, qt.qmin, qt.qmax, q)
        self.float_of[tensor] = self.op("DequantizeLinear", [q, scale, zp], f"{tensor}_dq")

    def clamp(self, tensor, lo, hi, y):
        """Relu / Clip for an output clamp ``[lo, hi]`` narrower than the tensor type's range."""
        q = self.g.tensors[tensor].qtype
        qmin, qmax = q.qmin, q.qmax
        if lo <= qmin and hi >= qmax:
            return y
        if lo == q.zero_point and hi >= qmax:
            return self.op("Relu", [y], f"{tensor}_relu")
        lo_f = np.float32((lo - q.zero_point - _QUARTER) * q.scale) if lo > qmin else np.float32(-np.inf)
        hi_f = np.float32((hi - q.zero_point + _QUARTER) * q.scale) if hi < qmax else np.float32(np.inf)
        return self.op("Clip", [y, self.const(f"{tensor}_clip_lo", lo_f), self.const(f"{tensor}_clip_hi", hi_f)],
                       f"{tensor}_clip")

    def weights(self, node):
        if node.points != 1 or np.any(node.multipliers != 1):
            raise QfabError(f"node {node.name!r}: multipoint weights have no QDQ form")
        wt = node.w_type
        dtype, _ = _storage(wt.bits, wt.signed)
        w = node.weights[0]
        if w.ndim == 4:
            w = w.transpose(0, 3, 1, 2)                                  # (Cout, Cin/g, KH, KW)
        elif node.input in self.channels_first:
            onnx_w = np.empty_like(w)
            onnx_w[:, self.channels_first[node.input]] = w
            w = onnx_w
        scales = np.asarray(wt.scales, np.float32)
        s_in = np.float32(self.g.tensors[node.input].qtype.scale)
        w_q = self.const(f"{node.name}_w_int", w.astype(dtype))
        if not wt.bipolar:
            w_q = self.narrow(f"{node.name}_w", wt.bits, wt.signed, wt.qmin, wt.qmax, w_q)
        w_s = self.const(f"{node.name}_w_scale", scales)
        w_zp = self.const(f"{node.name}_w_zero_point", np.zeros(len(scales), dtype))
        w_f = self.op("DequantizeLinear", [w_q, w_s, w_zp], f"{node.name}_w", axis=0)
        if np.any(np.abs(node.bias) > np.iinfo(np.int32).max):
            raise QfabError(f"node {node.name!r}: bias does not fit int32")
        b_q = self.const(f"{node.name}_b_int", node.bias.astype(np.int32))
        b_s = self.const(f"{node.name}_b_scale", (s_in * scales).astype(np.float32))
        b_zp = self.const(f"{node.name}_b_zero_point", np.zeros(len(scales), np.int32))
        b_f = self.op("DequantizeLinear", [b_q, b_s, b_zp], f"{node.name}_b", axis=0)
        return w_f, b_f

    def window(self, node):
        top, left, bottom, right = node.padding
        return dict(kernel_shape=list(node.kernel), strides=list(node.stride), pads=[top, left, bottom, right])

    def node(self, node):
        """Write ``node`` through its operator's ``qdq`` (`qfab.compiler.ops`), then quantize its output.

        A wide output (more than 8 bits: a layer's accumulator, docs/semantics.md) is left in
        float, the form it is imported from (a float last layer)."""
        y = op_for(node).qdq(self, node, self.float_of[node.inputs[0]])
        q = self.g.tensors[node.output].qtype
        if q.bits > 8 and node.output in self.g.outputs and hasattr(node, "w_type"):
            if q.zero_point or (node.requant.lo, node.requant.hi) != (q.qmin, q.qmax):
                raise QfabError(f"wide output {node.output!r} with a zero point or a clamp has no QDQ form")
            self.float_of[node.output] = y
            return
        self.quantize(node.output, y)

    def model(self, input_name, output_name):
        g = self.g
        if len(g.inputs) != 1 or len(g.outputs) != 1:
            raise QfabError("QDQ export supports graphs with one input and one output")
        shape = g.tensors[g.inputs[0]].shape
        if len(shape) == 3 and not self.nchw:
            raise QfabError("QDQ export of a channels-last (NHWC) image model is not supported; "
                            "qfab's ONNX import reads images as NCHW")
        onnx_shape = (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape
        self.quantize(g.inputs[0], input_name)
        for node in g.nodes:
            self.node(node)
        if g.outputs[0] in self.channels_first:
            raise QfabError("the graph output is a channels-first flatten; its element order has no QDQ form")
        self.nodes.append(helper.make_node("Identity", [self.float_of[g.outputs[0]]], [output_name],
                                           name="output_identity"))
        inp = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", *onnx_shape])
        out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, None)
        graph = helper.make_graph(self.nodes, "qfab_qdq", [inp], [out], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qfab")
        model.ir_version = 8
        bits = {t: g.tensors[t].qtype.describe() for t in g.tensors}
        rounding = {n.rounding for n in g.nodes if hasattr(n, "rounding")}
        if len(rounding) > 1:
            raise QfabError("the graph mixes pool rounding rules; the QDQ form records one")
        helper.set_model_props(model, {ROUNDING_PROP: rounding.pop() if rounding else "half_up",
                                       "qfab.activation_types": repr(bits),
                                       "qfab.weight_types": repr({n.name: n.w_type.describe() for n in g.nodes
                                                                  if hasattr(n, "w_type")})})
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
        return model


def qdq_model(graph, input_name="input", output_name="output"):
    """The QDQ ONNX model (`onnx.ModelProto`) of IR graph ``graph``."""
    return _Writer(graph).model(input_name, output_name)


def save_qdq(graph, path, input_name="input", output_name="output"):
    """Write ``graph`` as a QDQ ONNX model to ``path``."""
    onnx.save(qdq_model(graph, input_name, output_name), str(path))
