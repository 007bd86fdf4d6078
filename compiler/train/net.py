"""A torch fake-quantization network that mirrors a float graph (`qfab.compiler.fgraph.FGraph`),
and its export to the IR.

Every quantization point of the integer model has a fake quantizer here, in the same place:

- each activation tensor of the IR has one `LsqQuantizer` (tensors joined by MaxPool or Reshape
  share one, as they share one type); the graph input and the tensors a layer reads are unsigned
  ``a_bits`` with zero point 0 when they are non-negative (the input in [0, 1], ReLU outputs),
  signed symmetric otherwise; the graph output is signed ``output_bits``;
- weights are signed ``w_bits`` with one learned step per output channel; biases are rounded to
  the accumulator's step ``s_in * s_w``, as `build_graph` stores them.

So `QatNet.export` hands `build_graph` the learned steps as scales and the rounded weights as
integers, and the integer model computes what the fake-quantized network computed (up to
float32 rounding and the hardware's round-half-up at exact ties). Runs channels-first inside
(the models' own layout); a Flatten turns the map channels-last first, matching the IR's order.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qfab.base.errors import QfabError

from ..build import activation_type, build_graph, type_preserving
from ..calibrate import activation_range, quantize_weight_rows
from ..fgraph import FixedWeights, forward
from ..ir import Layout, QType
from ..ops import op_for
from .quantizers import LsqQuantizer

__all__ = ["QatNet"]

def _to_torch_weight(node):
    w = np.asarray(node.weight, np.float32)
    return w.transpose(0, 3, 1, 2) if w.ndim == 4 else w               # (Cout, Cin/g, KH, KW)


def _pad(x, padding, value=0.0):
    top, left, bottom, right = padding
    return F.pad(x, (left, right, top, bottom), value=value) if any(padding) else x


class QatNet(nn.Module):
    """Fake-quantized torch network of float graph ``fg`` (BatchNorm folded, activations fused).

    Parameters
    ----------
    fg : FGraph
        The float network; its weights initialize the trainable weights.
    w_bits, a_bits, output_bits : int
        Weight width, width of the activations layers read, width of the graph output.
    calib : ndarray
        Float inputs in the model's own layout, to initialize the steps MSE-optimally (as
        post-training quantization with ``calib_method="mse"`` would).
    """

    def __init__(self, fg, w_bits, a_bits, calib, output_bits=8):
        super().__init__()
        for what, bits in (("w_bits", w_bits), ("a_bits", a_bits), ("output_bits", output_bits)):
            if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
                raise QfabError(f"{what} must be an integer from 2 to 8, not {bits!r}")
        for n in fg.nodes:
            op_for(n.kind)                          # unknown kinds: a clear error
        if len(fg.inputs) != 1 or len(fg.outputs) != 1:
            raise QfabError("training supports graphs with one input and one output")
        self._fg = fg
        self._w_bits, self._a_bits, self._output_bits = w_bits, a_bits, output_bits
        self._nchw = fg.input_layout is Layout.NCHW and len(fg.shapes[fg.inputs[0]]) == 3
        self.root = {t: t for t in fg.shapes}
        for node in fg.nodes:
            if type_preserving(node.kind):
                self.root[node.output] = self.root[node.inputs[0]]
        values = forward(fg, self.to_ir_layout(np.asarray(calib, np.float64)), keep=tuple(fg.shapes))
        self.act_quant = nn.ModuleDict()
        for t in fg.shapes:
            if self.root[t] == t:
                self.act_quant[self._key(t)] = self._act_quantizer(t, values[t])
        self.weight = nn.ParameterDict()
        self.bias = nn.ParameterDict()
        self.weight_quant = nn.ModuleDict()
        for node in self.layers:
            w = _to_torch_weight(node)
            _, scales = quantize_weight_rows(np.asarray(node.weight, np.float64), w_bits)
            self.weight[self._key(node.name)] = nn.Parameter(torch.tensor(w))
            self.bias[self._key(node.name)] = nn.Parameter(torch.tensor(np.asarray(node.bias, np.float32)))
            self.weight_quant[self._key(node.name)] = LsqQuantizer(w_bits, True, scales)
            self.register_buffer("mask_" + self._key(node.name), torch.ones_like(torch.tensor(w)))

    # ---- structure ------------------------------------------------------------------------
    @staticmethod
    def _key(name):
        return name.replace(".", "_")

    @property
    def fg(self):
        return self._fg

    @property
    def layers(self):
        """The Dense and Conv2d nodes of the float graph."""
        return [n for n in self._fg.nodes if op_for(n.kind).weighted]

    def _bits_of(self, tensor):
        fg = self._fg
        if tensor in (self.root[t] for t in fg.outputs):
            return self._output_bits, True
        return self._a_bits, False

    def _act_quantizer(self, tensor, values):
        bits, is_output = self._bits_of(tensor)
        signed = is_output or float(values.min(initial=0.0)) < 0
        lo, hi = activation_range(values, "mse", bits, signed)
        return LsqQuantizer(bits, signed, activation_type(bits, lo, hi, signed=signed).scale)

    def quantizer_of(self, tensor):
        return self.act_quant[self._key(self.root[tensor])]

    def mask(self, node):
        return getattr(self, "mask_" + self._key(node.name))

    def set_mask(self, node, mask):
        self.mask(node).copy_(mask)

    def weights(self):
        """The float weights as trained (pruned ones masked to zero), one tensor per layer."""
        return [self.weight[self._key(n.name)] * self.mask(n) for n in self.layers]

    def weight_quantizers(self):
        return [self.weight_quant[self._key(n.name)] for n in self.layers]

    def to_ir_layout(self, x):
        return x.transpose(0, 2, 3, 1) if self._nchw and x.ndim == 4 else x

    # ---- forward --------------------------------------------------------------------------
    def quantized_weight(self, node):
        """The fake-quantized weight and the bias on the accumulator's grid of weighted ``node``."""
        key = self._key(node.name)
        wq = self.weight_quant[key](self.weight[key] * self.mask(node))
        # the bias on the accumulator's grid, straight-through; no gradient to the steps (the
        # rounding error of a 32-bit bias is negligible, its gradient in the steps is not)
        s_acc = (self.quantizer_of(node.inputs[0]).step.abs() * self.weight_quant[key].step.abs()).detach()
        b = self.bias[key]
        b = b + (torch.round(b / s_acc.clamp_min(1e-12)) * s_acc - b).detach()
        return wq, b

    @staticmethod
    def pad(x, padding, value=0.0):
        return _pad(x, padding, value)

    @staticmethod
    def _act(node, y):
        if node.act.kind == "relu":
            return F.relu(y)
        if node.act.kind == "clip":
            return torch.clamp(y, node.act.lo, node.act.hi)
        return y

    def forward(self, x):
        fg = self._fg
        env = {fg.inputs[0]: self.quantizer_of(fg.inputs[0])(x)}
        for node in fg.nodes:
            y = op_for(node.kind).torch_forward(self, node, [env[n] for n in node.inputs])
            y = self._act(node, y)
            if not type_preserving(node.kind):
                y = self.quantizer_of(node.output)(y)
            env[node.output] = y
        return env[fg.outputs[0]]

    # ---- export ---------------------------------------------------------------------------
    def fixed_weights(self):
        """`FixedWeights` by node name: the integer weights, learned steps, integer biases."""
        out = {}
        with torch.no_grad():
            for node in self.layers:
                key = self._key(node.name)
                wq = self.weight_quant[key]
                w = self.weight[key] * self.mask(node)
                codes = wq.codes(w).to(torch.int64).numpy()
                if codes.ndim == 4:
                    codes = codes.transpose(0, 2, 3, 1)
                s_in = self.quantizer_of(node.inputs[0]).step.abs()
                s_acc = (s_in * wq.step.abs()).clamp_min(1e-12)
                b_int = torch.round(self.bias[key] / s_acc).to(torch.int64).numpy()
                out[node.name] = FixedWeights(w_int=codes, scales=wq.exact_step(), bits=self._w_bits,
                                              signed=True, b_int=b_int)
        return out

    def qtypes(self):
        """Activation `QType` by tensor: the learned steps as scales, zero point 0."""
        out = {}
        for t in self._fg.shapes:
            q = self.quantizer_of(t)
            out[t] = QType(q.bits, q.signed, float(q.exact_step()[0]), 0)
        return out

    def export(self, metadata=None):
        """The verified IR `Graph` of the trained network."""
        return build_graph(self._fg, self.qtypes(), self.fixed_weights(), metadata=metadata)

    def predict(self, x, batch=1024):
        """Fake-quantized outputs (numpy) for float inputs ``x`` in the model's layout."""
        was = self.training
        self.eval()
        with torch.no_grad():
            y = torch.cat([self(torch.as_tensor(np.asarray(x[i:i + batch], np.float32)))
                           for i in range(0, len(x), batch)])
        self.train(was)
        return y.numpy()
