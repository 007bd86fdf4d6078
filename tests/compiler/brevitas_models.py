"""Brevitas QAT networks exported as QCDQ (QuantizeLinear -> Clip -> DequantizeLinear) by
Brevitas's own exporter, for comparing qfab's import with onnxruntime.

The networks are briefly trained-in (a few forward passes in training mode set the activation
ranges), then exported with ``export_onnx_qcdq`` (TorchScript exporter: quantized int32 biases
need it). Needs the ``[train]`` extra (torch, brevitas, onnxoptimizer).
"""

import warnings

import numpy as np


def export_qcdq(path, *, scales="fixed", pool="avg", output="float", bits=4, seed=0, depthwise=True,
                weights="float"):
    """Export a small 4-bit Brevitas CNN to ``path``; returns ``path``.

    ``scales``: "fixed" (power-of-two activation scales, Brevitas's fixed-point quantizers; the
    weights keep a float scale) or "float";
    ``pool``: "avg" or "max" (2 x 2); ``output``: "float" (QuantLinear's default: no output
    quantizer, the last layer's float result is the model output) or "int8" (a quantized output).
    Weights are per-tensor, biases int32 (``Int32Bias``), the input quantizer signed; the second
    convolution is depthwise unless ``depthwise=False``. ``weights``: "float" (a float per-tensor
    scale) or "fixed" (power-of-two, ``Int8WeightPerTensorFixedPoint``): with fixed scales for the
    activations too, every layer's ``s_x * s_w / s_y`` is a power of two and exact ties occur in
    every requantization (an int8 output is then fixed-point as well).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # brevitas warns about optional kernels on import
        return _export(path, scales, pool, output, bits, seed, depthwise, weights)


def _export(path, scales, pool, output, bits, seed, depthwise, weights):
    import brevitas.nn as qnn
    import torch
    from brevitas.export import export_onnx_qcdq
    from brevitas.quant import (
        Int8ActPerTensorFixedPoint,
        Int8ActPerTensorFloat,
        Int8WeightPerTensorFixedPoint,
        Int8WeightPerTensorFloat,
        Int32Bias,
        Uint8ActPerTensorFixedPoint,
        Uint8ActPerTensorFloat,
    )

    fixed = scales == "fixed"
    act_in = Int8ActPerTensorFixedPoint if fixed else Int8ActPerTensorFloat
    act_relu = Uint8ActPerTensorFixedPoint if fixed else Uint8ActPerTensorFloat
    weight = Int8WeightPerTensorFixedPoint if weights == "fixed" else Int8WeightPerTensorFloat
    torch.manual_seed(seed)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=act_in, bit_width=bits, return_quant_tensor=True)
            self.c1 = qnn.QuantConv2d(1, 8, 3, padding=1, weight_quant=weight, weight_bit_width=bits,
                                      bias_quant=Int32Bias, return_quant_tensor=True)
            self.r1 = qnn.QuantReLU(act_quant=act_relu, bit_width=bits, return_quant_tensor=True)
            self.c2 = qnn.QuantConv2d(8, 8, 3, padding=1, groups=8 if depthwise else 1, weight_quant=weight, weight_bit_width=bits,
                                      bias_quant=Int32Bias, return_quant_tensor=True)
            self.r2 = qnn.QuantReLU(act_quant=act_relu, bit_width=bits, return_quant_tensor=True)
            self.pool = torch.nn.AvgPool2d(2) if pool == "avg" else torch.nn.MaxPool2d(2)
            self.r3 = qnn.QuantReLU(act_quant=act_relu, bit_width=bits, return_quant_tensor=True)
            self.flat = torch.nn.Flatten()
            out_act = Int8ActPerTensorFixedPoint if weights == "fixed" else Int8ActPerTensorFloat
            out_quant = {"output_quant": out_act} if output == "int8" else {}
            self.fc = qnn.QuantLinear(8 * 4 * 4, 10, weight_quant=weight, weight_bit_width=bits,
                                      bias_quant=Int32Bias, **out_quant)

        def forward(self, x):
            x = self.r1(self.c1(self.inp(x)))
            x = self.r2(self.c2(x))
            x = self.r3(self.pool(x))
            return self.fc(self.flat(x))

    net = Net()
    net.train()
    with torch.no_grad():
        for _ in range(8):
            net(torch.randn(32, 1, 8, 8) * 1.5)
    net.eval()
    export_onnx_qcdq(net, torch.randn(1, 1, 8, 8), export_path=str(path), input_names=["input"],
                     opset_version=17, dynamo=False, dynamic_axes={"input": {0: "N"}})
    return path


def available():
    """Whether brevitas (and its exporter's onnxoptimizer) can be imported."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import brevitas.export  # noqa: F401
            import onnxoptimizer  # noqa: F401
    except ImportError:
        return False
    return True


def inputs(n=200, seed=1):
    return (np.random.default_rng(seed).standard_normal((n, 1, 8, 8)) * 1.5).astype(np.float32)


def export_narrow_mlp(path, seed=0):
    """A Brevitas 4-bit MLP whose hidden activation is narrow-range ([-7, 7]: a QCDQ Clip that is
    not a whole type's range), with an int8 output; input ``(N, 16)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import brevitas.nn as qnn
        import torch
        from brevitas.export import export_onnx_qcdq
        from brevitas.quant import Int8ActPerTensorFloat, Int32Bias

        torch.manual_seed(seed)

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inp = qnn.QuantIdentity(bit_width=4, return_quant_tensor=True)
                self.fc1 = qnn.QuantLinear(16, 12, weight_bit_width=4, bias_quant=Int32Bias, return_quant_tensor=True)
                self.mid = qnn.QuantIdentity(bit_width=4, narrow_range=True, return_quant_tensor=True)
                self.fc2 = qnn.QuantLinear(12, 5, weight_bit_width=4, bias_quant=Int32Bias,
                                           output_quant=Int8ActPerTensorFloat)

            def forward(self, x):
                return self.fc2(self.mid(self.fc1(self.inp(x))))

        net = Net()
        net.train()
        with torch.no_grad():
            for _ in range(8):
                net(torch.randn(32, 16))
        net.eval()
        export_onnx_qcdq(net, torch.randn(1, 16), export_path=str(path), input_names=["input"], opset_version=17,
                         dynamo=False, dynamic_axes={"input": {0: "N"}})
    return path
