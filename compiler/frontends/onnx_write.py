"""Writing float ONNX models from numpy weights (a tiny sequential builder).

Used to ship the bundled digits models, to export qfab-trained networks, and by tests that
need random models. Layers are tuples; see `float_model`.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["float_model", "save"]

OPSET = 17


class _Builder:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, prefix, array):
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def op(self, op_type, inputs, **attrs):
        out = self.name(op_type.lower() + "_")
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def layer(self, x, spec):
        kind, *args = spec
        if kind == "conv":
            w, b, stride, pads, group = args
            pads = pads if isinstance(pads, (list, tuple)) else [pads] * 4
            inputs = [x, self.const("W", w)] + ([self.const("B", b)] if b is not None else [])
            return self.op("Conv", inputs, kernel_shape=list(np.shape(w)[2:]), strides=[stride, stride],
                           pads=list(pads), group=group)
        if kind == "gemm":
            w, b = args
            return self.op("Gemm", [x, self.const("W", w), self.const("B", b)], transB=1)
        if kind == "matmul":
            w, b = args
            y = self.op("MatMul", [x, self.const("W", np.asarray(w).T)])
            return self.op("Add", [y, self.const("B", b)])
        if kind == "bn":
            gamma, beta, mean, var = args
            return self.op("BatchNormalization", [x] + [self.const(p, a) for p, a in
                                                        zip(("g", "b", "m", "v"), (gamma, beta, mean, var))])
        if kind == "relu":
            return self.op("Relu", [x])
        if kind == "clip":
            lo, hi = args
            return self.op("Clip", [x, self.const("lo", np.float32(lo)), self.const("hi", np.float32(hi))])
        if kind in ("maxpool", "avgpool"):
            k, s = args[0], args[1]
            pads = args[2] if len(args) > 2 else 0
            pads = pads if isinstance(pads, (list, tuple)) else [pads] * 4
            extra = {"count_include_pad": 1} if kind == "avgpool" and any(pads) else {}
            return self.op("MaxPool" if kind == "maxpool" else "AveragePool", [x], kernel_shape=[k, k],
                           strides=[s, s], pads=list(pads), **extra)
        if kind == "gap":
            return self.op("GlobalAveragePool", [x])
        if kind == "flatten":
            return self.op("Flatten", [x], axis=1)
        if kind == "residual":
            y = x
            for sub in args[0]:
                y = self.layer(y, sub)
            return self.op("Add", [x, y])
        raise ValueError(f"unknown layer kind {kind!r}")


def float_model(layers, input_shape, input_name="input", output_name="output"):
    """An ONNX model applying ``layers`` in order to an input of ``(N, *input_shape)``.

    Layer specs: ``("conv", W[Cout,Cin/g,KH,KW], b|None, stride, pads, group)``,
    ``("gemm", W[N,K], b)``, ``("matmul", W[N,K], b)``, ``("bn", gamma, beta, mean, var)``,
    ``("relu",)``, ``("clip", lo, hi)``, ``("maxpool"|"avgpool", k, stride[, pads])``, ``("gap",)``,
    ``("flatten",)``, ``("residual", [layers])`` (``x + layers(x)``).
    """
    b = _Builder()
    x = input_name
    for spec in layers:
        x = b.layer(x, spec)
    b.nodes.append(helper.make_node("Identity", [x], [output_name], name="output_identity"))
    inp = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", *input_shape])
    out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, None)
    graph = helper.make_graph(b.nodes, "qfab_model", [inp], [out], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qfab")
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


def save(model, path):
    onnx.save(model, str(path))
