"""ONNX -> float graph (`qfab.compiler.fgraph.FGraph`).

One walker reads float models, QDQ models and QOperator models: float operators become nodes,
BatchNorm folds into the layer before it, ReLU/Clip fuse into the node before them, NCHW becomes
channels-last (with the weights of a Dense after a Flatten permuted to match). The quantized
operators (`onnx_qops`) add fixed quantization to the same nodes and tensors.
"""

import numpy as np

from qfab.base.errors import UnsupportedModelError

from ..fgraph import Act, FGraph, FNode
from ..ir import Layout
from ..ops import op_for
from ..ops.bias_add import BiasConstant
from . import onnx_qops, qonnx_import
from .onnx_load import OnnxModel, node_label

__all__ = ["import_onnx", "Importer"]

ALIAS_OPS = {"Identity", "Dropout"}
FLATTEN_OR_QUANT = ("Flatten", "Reshape", "QuantizeLinear", "DequantizeLinear", "Identity", "Dropout")


class Importer:
    """State of one walk over an ONNX graph; handlers are methods named ``op_<OpType>``."""

    def __init__(self, model):
        self.m = model
        self.vals = {}            # onnx name -> fg tensor name
        self.perm = {}            # fg tensor -> permutation from a channels-first flatten
        self.fixed = {}           # onnx name -> (int array, scales, zero points, axis, dtype)
        self.alias_of = {}        # onnx name -> onnx name it aliases (for sole-use checks)
        self.weight_types = {}    # onnx name of a constant -> (bits, signed) a QONNX Quant gave it
        self.channels_last = {}   # onnx name -> fg tensor: a (C, H, W) map transposed to (H, W, C)
        self.superseded = {}      # fg tensor whose type a later QuantizeLinear may replace -> the fused op
        self.codes = {}           # onnx name -> QType: integer codes of an activation (Q, Clip of Q)
        self.qconst = {}          # onnx name -> (int array, scales, zero points, axis, dtype): Q of a constant
        self.code_range = {}      # onnx name -> (lo, hi): a QCDQ Clip of constant codes (the weight width)
        self.uses = {}
        for node in model.graph.node:
            for name in node.input:
                if name:
                    self.uses[name] = self.uses.get(name, 0) + 1
        for out in model.graph.output:
            self.uses[out.name] = self.uses.get(out.name, 0) + 1
        in_shape = model.input_shape
        if len(in_shape) == 3:
            layout, shape = Layout.NCHW, (in_shape[1], in_shape[2], in_shape[0])
        elif len(in_shape) == 1:
            layout, shape = Layout.NHWC, in_shape
        else:
            raise UnsupportedModelError(f"graph input {model.input.name!r} has shape (N, {in_shape}); "
                                        "qfab supports (N, K) vectors and (N, C, H, W) images")
        name = model.input.name
        self.fg = FGraph(shapes={name: shape}, nodes=[], inputs=(name,), outputs=(), input_layout=layout)
        self.vals[name] = name
        self.node = None
        self.notes = list(getattr(model, "notes", []))

    # ---- helpers -------------------------------------------------------------------------
    def fail(self, message):
        raise UnsupportedModelError(f"{node_label(self.node)}: {message}")

    def is_const(self, name):
        return name in self.m.initializers or name in self.fixed

    def const(self, name, what="input"):
        if name in self.fixed:
            q, scale, zp, axis, _ = self.fixed[name]
            return self._dequant_const(q, scale, zp, axis)
        if name not in self.m.initializers:
            self.fail(f"{what} {name!r} must be a constant")
        return np.asarray(self.m.initializers[name], dtype=np.float64)

    @staticmethod
    def _dequant_const(q, scale, zp, axis):
        scale, zp = np.asarray(scale, np.float64), np.asarray(zp, np.int64)
        if scale.ndim == 1 and q.ndim > 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        return (q.astype(np.int64) - zp) * scale

    def tensor(self, name):
        if name in self.channels_last and self.node.op_type not in FLATTEN_OR_QUANT:
            self.fail(f"input {name!r} is a Transpose to (N, H, W, C), which qfab reads only before a flatten")
        if name not in self.vals:
            if self.is_const(name):
                self.fail(f"input {name!r} is a constant where qfab expects an activation")
            self.fail(f"input {name!r} is not produced by a supported node")
        return self.vals[name]

    def attrs(self):
        return self.m.attrs(self.node)

    def new_name(self, onnx_name):
        name = onnx_name
        while name in self.fg.shapes:
            name += "_"
        return name

    def emit(self, kind, inputs, shape, **fields):
        name = self.new_name(self.node.output[0])
        label = self.node.name or f"{kind.lower()}_{len(self.fg.nodes)}"
        while any(n.name == label for n in self.fg.nodes):
            label += "_"
        fnode = FNode(kind=kind, name=label, inputs=tuple(inputs), output=name, **fields)
        self.fg.nodes.append(fnode)
        self.fg.shapes[name] = tuple(int(d) for d in shape)
        self.vals[self.node.output[0]] = name
        return fnode

    def alias(self, src_onnx, dst_onnx):
        self.vals[dst_onnx] = self.tensor(src_onnx)
        self.alias_of[dst_onnx] = src_onnx
        if src_onnx in self.channels_last:
            self.channels_last[dst_onnx] = self.channels_last[src_onnx]

    def sole_use(self, onnx_name):
        """True if nothing but the current node reads this value (through aliases)."""
        while True:
            if self.uses.get(onnx_name, 0) != 1:
                return False
            if onnx_name not in self.alias_of:
                return True
            onnx_name = self.alias_of[onnx_name]

    def replace_node(self, old, new):
        self.fg.nodes[self.fg.nodes.index(old)] = new

    def producer_for_fusion(self, onnx_name, what):
        t = self.tensor(onnx_name)
        prod = self.fg.producer(t)
        if prod is None:
            self.fail(f"{what} applies directly to the graph input; qfab fuses it into the node before")
        if not self.sole_use(onnx_name):
            self.fail(f"{what} input {onnx_name!r} is also used elsewhere, so it cannot be fused "
                      "into the node that produces it")
        return prod

    def fuse_act(self, act):
        prod = self.producer_for_fusion(self.node.input[0], self.node.op_type)
        self.replace_node(prod, prod.replace(act=prod.act.then(act)))
        self.supersede(prod.output)
        self.alias(self.node.input[0], self.node.output[0])

    def shape_of(self, t):
        return self.fg.shapes[t]

    # ---- float operators -----------------------------------------------------------------
    def _window_attrs(self, a, kernel):
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            self.fail(f"auto_pad={a['auto_pad']!r} is not supported; export with explicit pads")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            self.fail(f"dilations {a['dilations']} are not supported (only 1)")
        if a.get("ceil_mode", 0):
            self.fail("ceil_mode=1 is not supported")
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if len(kernel) != 2 or len(pads) != 4:
            self.fail(f"only 2-D windows are supported, not kernel {kernel}")
        return tuple(int(s) for s in a.get("strides", [1, 1])), (pads[0], pads[1], pads[2], pads[3])

    def _out_hw(self, hw, kernel, stride, pads):
        return ((hw[0] + pads[0] + pads[2] - kernel[0]) // stride[0] + 1,
                (hw[1] + pads[1] + pads[3] - kernel[1]) // stride[1] + 1)

    def conv(self, x, w, b, a, fixed=None):
        """``w`` in ONNX layout (Cout, Cin/g, KH, KW); ``fixed``: its `FixedWeights`, same layout."""
        shape = self.shape_of(x)
        if len(shape) != 3:
            self.fail(f"input has shape {shape}; Conv needs (C, H, W)")
        if w.ndim != 4:
            self.fail(f"weight has shape {w.shape}; only 2-D convolution is supported")
        kernel = tuple(int(k) for k in w.shape[2:])
        stride, pads = self._window_attrs(a, kernel)
        groups = int(a.get("group", 1))
        cout = w.shape[0]
        if shape[2] != w.shape[1] * groups:
            self.fail(f"input has {shape[2]} channels, weight expects {w.shape[1]} x group {groups}")
        ho, wo = self._out_hw(shape[:2], kernel, stride, pads)
        if fixed is not None:
            fixed = fixed.replace(w_int=fixed.w_int.transpose(0, 2, 3, 1))
        kind = "DepthwiseConv2d" if 1 < groups == shape[2] == cout else "Conv2d"
        return self.emit(kind, [x], (ho, wo, cout), weight=w.transpose(0, 2, 3, 1),
                         bias=np.zeros(cout) if b is None else b.reshape(cout),
                         kernel=kernel, stride=stride, padding=pads, groups=groups, fixed=fixed)

    def fixed_weights(self, w_name, b_name, out_axis):
        """`onnx_qops.fixed_weights`, with the bit width a QONNX ``Quant`` gave the weight."""
        fixed = onnx_qops.fixed_weights(self, w_name, b_name, out_axis)
        if fixed is not None and w_name in self.weight_types:
            bits, signed = self.weight_types[w_name]
            fixed = fixed.replace(bits=bits, signed=signed)
        return fixed

    def op_Conv(self):
        n = self.node
        x = self.tensor(n.input[0])
        b_name = n.input[2] if len(n.input) > 2 and n.input[2] else None
        b = self.const(b_name, "bias") if b_name else None
        fixed = self.fixed_weights(n.input[1], b_name, out_axis=0)
        return self.conv(x, self.const(n.input[1], "weight"), b, self.attrs(), fixed)

    def dense(self, x, w, b, fixed=None):
        """``w`` as (N, K) in the ONNX feature order of ``x``; ``fixed`` likewise."""
        shape = self.shape_of(x)
        if len(shape) != 1 or w.ndim != 2 or w.shape[1] != shape[0]:
            self.fail(f"weight {w.shape} does not fit input shape {shape}")
        if x in self.perm:
            w = w[:, self.perm[x]]
            if fixed is not None:
                fixed = fixed.replace(w_int=fixed.w_int[:, self.perm[x]])
        n_out = w.shape[0]
        if b is not None and b.size == n_out:
            b = b.reshape(n_out)
        return self.emit("Dense", [x], (n_out,), weight=w, fixed=fixed,
                         bias=np.zeros(n_out) if b is None else np.broadcast_to(b, (n_out,)).astype(np.float64))

    def op_Gemm(self):
        n, a = self.node, self.attrs()
        if a.get("transA", 0):
            self.fail("transA=1 is not supported")
        trans = a.get("transB", 0)
        w = self.const(n.input[1], "weight B")
        w = w if trans else w.T
        w = w * a.get("alpha", 1.0)
        b_name = n.input[2] if len(n.input) > 2 and n.input[2] else None
        b = self.const(b_name, "bias C") * a.get("beta", 1.0) if b_name else None
        if b is not None and b.size not in (1, w.shape[0]):
            self.fail(f"bias C of shape {b.shape} is not per output")
        fixed = self.fixed_weights(n.input[1], b_name, out_axis=0 if trans else 1)
        if fixed is not None:
            if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                self.fail("quantized Gemm with alpha or beta other than 1 is not supported")
            fixed = fixed if trans else fixed.replace(w_int=fixed.w_int.T)
        return self.dense(self.tensor(n.input[0]), w, b, fixed)

    def op_MatMul(self):
        n = self.node
        if self.is_const(n.input[0]) or not self.is_const(n.input[1]):
            self.fail("only activation x constant-weight MatMul is supported")
        fixed = self.fixed_weights(n.input[1], None, out_axis=1)
        if fixed is not None:
            fixed = fixed.replace(w_int=fixed.w_int.T)
        return self.dense(self.tensor(n.input[0]), self.const(n.input[1], "weight").T, None, fixed)

    def op_Add(self):
        n = self.node
        consts = [self.is_const(i) for i in n.input]
        if consts == [False, False]:
            a, b = self.tensor(n.input[0]), self.tensor(n.input[1])
            if self.shape_of(a) != self.shape_of(b):
                self.fail(f"shapes {self.shape_of(a)} and {self.shape_of(b)} differ; broadcasting Add is not supported")
            if self.perm.get(a) is not None or self.perm.get(b) is not None:
                self.fail("Add after a channels-first Flatten is not supported")
            return self.emit("Add", [a, b], self.shape_of(a))
        if all(consts):
            self.fail("Add of two constants should be folded before import")
        xi, ci = (0, 1) if consts[1] else (1, 0)
        if self.tensor(n.input[xi]) in self.fg.qtypes:       # quantized before the add: its own node
            return self.bias_add(n.input[xi], *self.bias_constant(n.input[ci]))
        self.add_bias(n.input[xi], self.const(n.input[ci], "bias"))
        self.alias(n.input[xi], n.output[0])

    def bias_constant(self, name):
        """``(codes, scale, zero_point)`` of the constant ``name`` of a QDQ ``Add``: the integer codes
        behind a ``DequantizeLinear`` (one scale and zero point), or a float initializer's values
        (scale None)."""
        if name in self.fixed:
            q, scale, zp, _, dtype = self.fixed[name]
            if np.size(scale) != 1 or np.size(zp) != 1:
                self.fail(f"constant {name!r} is quantized per channel; qfab reads a quantized constant "
                          "added to an activation with one scale and zero point")
            if np.dtype(dtype).kind not in "iu" or np.dtype(dtype).itemsize > 4:
                self.fail(f"constant {name!r} has type {np.dtype(dtype)}; qfab reads integer constants "
                          "of at most 32 bits")
            return np.asarray(q, np.int64), float(np.asarray(scale).reshape(())), int(np.asarray(zp).reshape(()))
        return self.const(name, "constant"), None, 0

    def bias_add(self, onnx_name, codes, scale, zero_point):
        """A constant added to the quantized tensor ``onnx_name`` (a bias after a layer whose output
        is already quantized): a ``BiasAdd`` node, which keeps both roundings (the layer's and the
        add's), as onnxruntime computes them. ``codes`` with ``scale`` and ``zero_point``, or float
        values (``scale`` None); one value, one per channel of an ``(N, C, H, W)`` map (shape
        ``(C, 1, 1)`` or ``(1, C, 1, 1)``), or one per element of an ``(N, K)`` vector (``(K,)`` or
        ``(1, K)``)."""
        x = self.tensor(onnx_name)
        shape = self.shape_of(x)
        codes = np.asarray(codes)
        channels = shape[-1]
        dims = (1,) * (len(shape) + 1 - codes.ndim) + codes.shape
        if codes.size == 1:
            per = np.full(channels, codes.reshape(()))
        elif dims == ((1, channels, 1, 1) if len(shape) == 3 else (1, channels)):
            per = codes.reshape(channels)
            if x in self.perm:                          # ONNX's (C, H, W) order -> the IR's
                per = per[self.perm[x]]
        else:
            onnx_shape = (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape
            self.fail(f"constant of shape {codes.shape} is not one value, nor one per channel of the "
                      f"(N, {', '.join(map(str, onnx_shape))}) input")
        real = per.astype(np.float64) if scale is None else (per.astype(np.float64) - zero_point) * scale
        fnode = self.emit("BiasAdd", [x], shape, bias=real, fixed=BiasConstant(per, scale, zero_point))
        if x in self.perm:
            self.perm[fnode.output] = self.perm[x]
        if scale is None:
            self.notes.append(f"{node_label(self.node)}: a float constant added to the quantized tensor {x!r}: "
                              "onnxruntime adds it in float32, qfab exactly (they can differ by one code "
                              "where float32 rounding decides a tie)")
        return fnode

    def add_bias(self, onnx_name, c):
        """Fold constant ``c`` into the bias of the float layer that computes ``onnx_name`` (nothing
        rounds between the layer and the add; a quantized output takes `bias_add` instead)."""
        prod = self.producer_for_fusion(onnx_name, "Add of a constant (bias)")
        if not op_for(prod.kind).weighted or prod.act.kind != "none":
            self.fail("a constant can only be added to the output of a Conv/Gemm/MatMul (as its bias)")
        cout = prod.weight.shape[0]
        if c.size == 1:
            c = np.full(cout, float(c.reshape(())))
        elif c.size == cout:
            c = c.reshape(cout)
        else:
            self.fail(f"constant of shape {c.shape} is not a per-channel bias of {cout} channels")
        fixed = None if prod.fixed is None else prod.fixed.replace(b_int=None)   # requantized at s_in * s_w
        self.replace_node(prod, prod.replace(bias=prod.bias + c, fixed=fixed))

    def supersede(self, t):
        """Tensor ``t`` had a type before an operator that qfab fuses into its producer: a later
        QuantizeLinear with another type replaces it (the rounding between the two is not kept,
        and the import notes it)."""
        if t in self.fg.qtypes:
            self.superseded[t] = f"{self.node.op_type} {self.node.name!r}"

    def requantize_or_supersede(self):
        """A QuantizeLinear of a tensor that already has another type: a superseded type is
        replaced; otherwise the tensor is requantized (a ``Requantize`` node). True if handled here."""
        n = self.node
        if self.is_const(n.input[0]):
            return False
        t = self.tensor(n.input[0])
        old = self.fg.qtypes.get(t)
        new = onnx_qops._act_qtype(self, n.input[1], n.input[2] if len(n.input) > 2 else "", "QuantizeLinear")
        if old is None or old == new:
            return False
        if t in self.superseded:
            del self.fg.qtypes[t]
            self.notes.append(f"tensor {t!r}: the quantization before the fused {self.superseded.pop(t)} is "
                              "dropped (one rounding instead of two)")
            return False
        fnode = self.emit("Requantize", [t], self.shape_of(t))
        self.fg.qtypes[fnode.output] = new
        if t in self.perm:
            self.perm[fnode.output] = self.perm[t]
        return True

    def _scale_by_constant(self, divide):
        n = self.node
        consts = [self.is_const(i) for i in n.input]
        if consts != [False, True]:
            self.fail(f"only an activation {n.op_type} a constant is supported (a scale folded into the layer before)")
        prod = self.producer_for_fusion(n.input[0], f"{n.op_type} by a constant")
        if not op_for(prod.kind).weighted or prod.act.kind != "none" or prod.fixed is not None:
            self.fail(f"{n.op_type} by a constant folds only into a float Conv/Gemm/MatMul with no activation yet")
        c = self.const(n.input[1], "scale")
        cout = prod.weight.shape[0]
        if c.size not in (1, cout):
            self.fail(f"constant of shape {c.shape} is not one scale or one per channel of {cout} channels")
        c = np.broadcast_to(c.reshape(-1), (cout,)).astype(np.float64)
        if divide:
            if np.any(c == 0):
                self.fail("division by zero")
            c = 1.0 / c
        w = prod.weight * c.reshape((-1,) + (1,) * (prod.weight.ndim - 1))
        self.replace_node(prod, prod.replace(weight=w, bias=prod.bias * c))
        self.alias(n.input[0], n.output[0])

    def op_Mul(self):
        self._scale_by_constant(divide=False)

    def op_Div(self):
        self._scale_by_constant(divide=True)

    def op_Transpose(self):
        n = self.node
        perm = tuple(self.attrs().get("perm", ()))
        if n.input[0] in self.fixed:            # a quantized weight (QONNX Quant of a constant, transposed)
            q, scale, zp, axis, dtype = self.fixed[n.input[0]]
            perm = perm or tuple(reversed(range(q.ndim)))
            self.fixed[n.output[0]] = (q.transpose(perm), scale, zp, perm.index(axis), dtype)
            if n.input[0] in self.weight_types:
                self.weight_types[n.output[0]] = self.weight_types[n.input[0]]
            return
        x = self.tensor(n.input[0])
        if len(self.shape_of(x)) != 3 or perm != (0, 2, 3, 1):
            self.fail(f"Transpose with perm {list(perm)} is not supported; only (0, 2, 3, 1) before a flatten")
        self.vals[self.node.output[0]] = x
        self.channels_last[self.node.output[0]] = x

    def op_Relu(self):
        self.fuse_act(Act("relu"))

    def op_Clip(self):
        n, a = self.node, self.attrs()
        lo = a.get("min", float("-inf"))
        hi = a.get("max", float("inf"))
        if len(n.input) > 1 and n.input[1]:
            lo = float(self.const(n.input[1], "min"))
        if len(n.input) > 2 and n.input[2]:
            hi = float(self.const(n.input[2], "max"))
        if onnx_qops.is_codes(self, n.input[0]):      # QCDQ: a Clip of integer codes narrows the type
            return onnx_qops.clip_codes(self, lo, hi)
        self.fuse_act(Act("clip", lo, hi))

    def op_BatchNormalization(self):
        n, a = self.node, self.attrs()
        prod = self.producer_for_fusion(n.input[0], "BatchNormalization")
        if prod.fixed is not None:
            self.fail("BatchNormalization after a quantized layer cannot be folded into its integer weights; "
                      "run onnxruntime.quantization.quant_pre_process on the float model before quantize_static")
        if not op_for(prod.kind).weighted or prod.act.kind != "none":
            self.fail("BatchNormalization must follow a Conv or Gemm directly to be folded")
        gamma, beta, mean, var = (self.const(i, "BN parameter") for i in n.input[1:5])
        k = gamma / np.sqrt(var + a.get("epsilon", 1e-5))
        w = prod.weight * k.reshape((-1,) + (1,) * (prod.weight.ndim - 1))
        self.replace_node(prod, prod.replace(weight=w, bias=(prod.bias - mean) * k + beta))
        self.alias(n.input[0], n.output[0])

    def _pool(self, kind):
        a = self.attrs()
        x = self.tensor(self.node.input[0])
        shape = self.shape_of(x)
        kernel = tuple(int(k) for k in a["kernel_shape"])
        stride, pads = self._window_attrs(a, kernel)
        if kind == "MaxPool" and a.get("storage_order", 0):
            self.fail("storage_order=1 is not supported")
        if kind == "MaxPool" and len(self.node.output) > 1 and self.node.output[1]:
            self.fail("the Indices output is not supported")
        if kind == "AvgPool" and any(pads) and not a.get("count_include_pad", 0):
            self.fail("AveragePool with padding needs count_include_pad=1 (a fixed divisor)")
        ho, wo = self._out_hw(shape[:2], kernel, stride, pads)
        return self.emit(kind, [x], (ho, wo, shape[2]), kernel=kernel, stride=stride, padding=pads)

    def op_MaxPool(self):
        return self._pool("MaxPool")

    def op_AveragePool(self):
        return self._pool("AvgPool")

    def op_GlobalAveragePool(self):
        x = self.tensor(self.node.input[0])
        shape = self.shape_of(x)
        if len(shape) != 3:
            self.fail(f"input has shape {shape}; GlobalAveragePool needs (C, H, W)")
        return self.emit("GlobalAvgPool", [x], (1, 1, shape[2]))

    def flatten_to(self, x, size, channels_last=False):
        """A Reshape to a vector; in ONNX (C, H, W) order unless ``channels_last`` (the IR's order)."""
        shape = self.shape_of(x)
        total = int(np.prod(shape))
        if size != total:
            self.fail(f"cannot reshape {total} elements to {size}")
        fnode = self.emit("Reshape", [x], (size,))
        if channels_last:
            return fnode
        if len(shape) == 3 and self.fg.input_layout is Layout.NCHW and shape[0] * shape[1] > 1:
            h, w, c = shape
            idx = np.arange(total).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
            self.perm[fnode.output] = idx          # IR position -> ONNX (C, H, W) position
        elif x in self.perm:
            self.perm[fnode.output] = self.perm[x]
        return fnode

    def flatten_input(self):
        """The input of a flattening node, and whether a Transpose to (H, W, C) came before it."""
        name = self.node.input[0]
        if name in self.channels_last:
            return self.channels_last[name], True
        return self.tensor(name), False

    def op_Flatten(self):
        if self.attrs().get("axis", 1) != 1:
            self.fail("only Flatten with axis=1 is supported")
        x, channels_last = self.flatten_input()
        return self.flatten_to(x, int(np.prod(self.shape_of(x))), channels_last)

    def op_Reshape(self):
        x, channels_last = self.flatten_input()
        target = [int(v) for v in self.const(self.node.input[1], "shape").reshape(-1)]
        total = int(np.prod(self.shape_of(x)))
        if len(target) == 2 and target[1] in (-1, total):
            return self.flatten_to(x, total, channels_last)
        self.fail(f"Reshape to {target} is not supported; only flattening to (N, features)")

    def op_Identity(self):
        self.alias(self.node.input[0], self.node.output[0])

    op_Dropout = op_Identity

    def op_Softmax(self):
        if self.node.output[0] not in {o.name for o in self.m.graph.output}:
            self.fail("Softmax is only supported as the last operator (it is dropped; qfab outputs logits)")
        self.notes.append(f"dropped the final Softmax {self.node.name!r}: qfab outputs the logits")
        self.alias(self.node.input[0], self.node.output[0])

    def op_Constant(self):
        pass  # read by OnnxModel

    # ---- walk ------------------------------------------------------------------------------
    def run(self):
        for i, node in enumerate(self.m.graph.node):
            self.node = node
            if node.domain in qonnx_import.DOMAINS:
                qonnx_import.handler(self, node)(self)
                continue
            if node.domain not in ("", "ai.onnx", "com.microsoft"):
                self.fail(f"operator domain {node.domain!r} is not supported")
            if node.op_type == "QuantizeLinear" and self.requantize_or_supersede():
                continue
            handler = getattr(self, "op_" + node.op_type, None) or onnx_qops.HANDLERS.get(node.op_type)
            if handler is None:
                self.fail(f"operator {node.op_type!r} is not supported (supported: {', '.join(supported_ops())})")
            if handler in onnx_qops.HANDLERS.values():
                handler(self)
            else:
                handler()
        self._types_before_reshapes()
        outputs = []
        for out in self.m.graph.output:
            if out.name not in self.vals:
                raise UnsupportedModelError(f"graph output {out.name!r} is not computed by supported nodes")
            t = self.vals[out.name]
            if t in self.perm:
                raise UnsupportedModelError(f"graph output {out.name!r} is a channels-first flatten; "
                                            "qfab cannot produce that element order")
            outputs.append(t)
        if len(outputs) != 1:
            raise UnsupportedModelError(f"qfab supports models with one output, this one has {len(outputs)}")
        self.fg.outputs = tuple(outputs)
        onnx_qops.type_float_outputs(self)          # a quantized model's unquantized last layer
        return self.fg


    def _types_before_reshapes(self):
        """A Reshape keeps its input's type: an untyped input read only by a typed Reshape (the
        GlobalAveragePool before the Flatten that a ReduceMean became) takes the Reshape's type."""
        for node in reversed(self.fg.nodes):
            src = node.inputs[0] if node.inputs else None
            if node.kind == "Reshape" and node.output in self.fg.qtypes and src not in self.fg.qtypes \
                    and len(self.fg.consumers(src)) == 1 and src not in self.fg.inputs:
                self.fg.qtypes[src] = self.fg.qtypes[node.output]


def supported_ops():
    own = [name[3:] for name in dir(Importer) if name.startswith("op_") and name != "op_Constant"]
    return sorted(set(own) | set(onnx_qops.HANDLERS))


def import_onnx(path):
    """Read ``path`` into an `FGraph` (with fixed quantization if the model is quantized)."""
    imp = Importer(OnnxModel(path))
    fg = imp.run()
    fg.notes = imp.notes
    fg.pool_rounding = onnx_qops.pool_rounding(imp)
    return fg
