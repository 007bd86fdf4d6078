"""Reading an ONNX file safely: parse, check, infer shapes, and describe problems by node.

ONNX files are protobuf (no code runs on load). Everything qfab reads from a model goes through
`OnnxModel`, whose errors name the node and the reason.
"""

import os

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from qfab.base.errors import UnsupportedModelError

from .canonicalize import canonicalize

__all__ = ["OnnxModel", "node_label"]

MAX_MODEL_BYTES = 1 << 31


def node_label(node, index=None):
    name = node.name or (f"#{index}" if index is not None else "?")
    return f"node {name!r} ({node.op_type})"


class OnnxModel:
    """A checked ONNX model: initializers as numpy arrays, static shapes by tensor name."""

    def __init__(self, path):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise UnsupportedModelError(f"{self.path}: no such file")
        if os.path.getsize(self.path) > MAX_MODEL_BYTES:
            raise UnsupportedModelError(f"{self.path}: larger than 2 GiB")
        try:
            model = onnx.load(self.path, load_external_data=False)
        except Exception as e:  # protobuf raises several types for garbage input
            raise UnsupportedModelError(f"{self.path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
        if not model.graph.node:
            raise UnsupportedModelError(f"{self.path}: not an ONNX model with a graph (no nodes found)")
        for init in model.graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                raise UnsupportedModelError(f"{self.path}: initializer {init.name!r} uses external data, "
                                            "which qfab does not read; save the model with weights inside")
        _check_opsets(self.path, model)
        _check_finite(self.path, model.graph)
        try:
            model, self.notes = canonicalize(model)
        except Exception as e:  # the reference evaluator raises many types on a node it cannot run
            raise UnsupportedModelError(f"{self.path}: canonicalization failed ({type(e).__name__}: {e})") from None
        try:
            model = shape_inference.infer_shapes(model, strict_mode=False)
        except Exception as e:
            raise UnsupportedModelError(f"{self.path}: shape inference failed: {e}") from None
        try:
            onnx.checker.check_model(model)
        except Exception as e:
            raise UnsupportedModelError(f"{self.path}: the ONNX checker rejects the model: {e}") from None
        self.model = model
        self.graph = model.graph
        self.opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        self.initializers = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant":
                self.initializers[node.output[0]] = self._constant_value(node)
        self.value_info = {}
        for vi in list(self.graph.input) + list(self.graph.value_info) + list(self.graph.output):
            self.value_info[vi.name] = vi
        inputs = [vi for vi in self.graph.input if vi.name not in self.initializers]
        if len(inputs) != 1:
            raise UnsupportedModelError(f"{self.path}: qfab supports models with one input, this one has "
                                        f"{len(inputs)}: {[vi.name for vi in inputs]}")
        self.input = inputs[0]
        self.input_shape = self.static_shape(self.input.name, what="graph input", allow_batch=True)

    def _constant_value(self, node):
        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
        raise UnsupportedModelError(f"{node_label(node)}: only Constant nodes with a 'value' tensor are supported")

    def static_shape(self, name, what="tensor", allow_batch=True):
        """Shape of ``name`` with the leading batch axis removed; errors on dynamic shapes."""
        vi = self.value_info.get(name)
        if vi is None or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            raise UnsupportedModelError(f"{what} {name!r} has no known shape; qfab needs static shapes")
        dims = vi.type.tensor_type.shape.dim
        shape = []
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(int(d.dim_value))
            elif i == 0 and allow_batch:
                shape.append(None)
            else:
                raise UnsupportedModelError(
                    f"{what} {name!r} has a dynamic dimension {i} ({d.dim_param or '?'}) in shape "
                    f"{[x.dim_value or x.dim_param for x in dims]}; only the batch axis may be dynamic")
        if not shape:
            raise UnsupportedModelError(f"{what} {name!r} is a scalar; qfab needs a batched tensor")
        return tuple(shape[1:])

    def attrs(self, node):
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def elem_type(self, name):
        vi = self.value_info.get(name)
        if name in self.initializers:
            return self.initializers[name].dtype
        if vi is None:
            return None
        return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)

    def np_const(self, node, name, what):
        if name not in self.initializers:
            raise UnsupportedModelError(f"{node_label(node)}: {what} {name!r} must be a constant initializer")
        return np.asarray(self.initializers[name])


def _check_opsets(path, model):
    """Refuse an operator set newer than the installed onnx package knows (its operators'
    meaning is unknown to the checker, shape inference and qfab alike)."""
    newest = onnx.defs.onnx_opset_version()
    for o in model.opset_import:
        if (o.domain or "ai.onnx") == "ai.onnx" and o.version > newest:
            raise UnsupportedModelError(f"{path}: the model uses ONNX opset {o.version}, newer than {newest}, "
                                        f"the newest that onnx {onnx.__version__} knows; export it with opset "
                                        f"{newest} or older")
        if (o.domain or "ai.onnx") == "ai.onnx" and o.version < 1:
            raise UnsupportedModelError(f"{path}: the model declares ONNX opset {o.version}, which does not exist")


def _check_finite(path, graph):
    """Refuse NaN or infinite float constants (initializers and Constant nodes): quantization
    would turn them into garbage codes. The error names the constant and the nodes using it."""
    def users(name):
        found = [node_label(n, i) for i, n in enumerate(graph.node) if name in n.input]
        return f", used by {', '.join(found)}" if found else ""

    def check(name, tensor, what):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            return
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type) if tensor.data_type else None
        if dtype is None or np.dtype(dtype).kind not in "fc":
            return
        try:
            a = numpy_helper.to_array(tensor)
        except Exception as e:      # a malformed tensor: the checker names it later, or here
            raise UnsupportedModelError(f"{path}: {what} {name!r} cannot be read ({type(e).__name__}: {e})") from None
        bad = ~np.isfinite(a)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise UnsupportedModelError(
                f"{path}: {what} {name!r}{users(name)} holds {a[index]} at index {index} "
                f"({int(bad.sum())} of {a.size} values are NaN or infinite); weights and constants must be finite")

    for init in graph.initializer:
        check(init.name, init, "initializer")
    for i, node in enumerate(graph.node):
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    check(node.output[0] if node.output else node.name, attr.t, f"{node_label(node, i)}: constant")
