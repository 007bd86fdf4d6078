"""QONNX (``Quant`` nodes) exported by Brevitas from a network trained here with quantization-aware
training, 4-bit weights and activations: imported with its real widths and compared with qonnx's own
executor (`qonnx.core.onnx_exec.execute_onnx`) on every output element."""

import warnings

import numpy as np
import pytest

from qfab.base.errors import UnsupportedModelError
from qfab.compiler import reference
from qfab.compiler.datasets import digits
from qfab.compiler.load import load_graph

torch = pytest.importorskip("torch")
pytest.importorskip("brevitas")
pytest.importorskip("qonnx")
nn = torch.nn

pytestmark = pytest.mark.filterwarnings("ignore")    # Brevitas and the exporter warn about their own internals

IMAGES = 40


def brevitas_net(bits=4):
    from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU
    from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerTensorFloat, Uint8ActPerTensorFloat
    w = dict(weight_quant=Int8WeightPerTensorFloat, weight_bit_width=bits, bias=False)
    act = dict(act_quant=Uint8ActPerTensorFloat, bit_width=bits)
    return nn.Sequential(
        QuantIdentity(act_quant=Int8ActPerTensorFloat, bit_width=8),
        QuantConv2d(1, 8, 3, padding=1, **w), QuantReLU(**act), nn.MaxPool2d(2),
        QuantConv2d(8, 16, 3, padding=1, **w), QuantReLU(**act), nn.Flatten(),
        QuantLinear(16 * 4 * 4, 10, **w), QuantIdentity(act_quant=Int8ActPerTensorFloat, bit_width=8))


def brevitas_qonnx(folder, steps=40):
    """Train the 4-bit net briefly (QAT) on the digits and export it with ``export_qonnx``."""
    from brevitas.export import export_qonnx
    x_train, y_train, x_test, _ = digits("NCHW")
    torch.manual_seed(0)
    net = brevitas_net()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    xt, yt = torch.tensor(x_train), torch.tensor(y_train, dtype=torch.long)
    net.train()
    for i in range(steps):
        sl = slice(i * 32 % 1000, i * 32 % 1000 + 32)
        opt.zero_grad()
        nn.functional.cross_entropy(net(xt[sl]), yt[sl]).backward()
        opt.step()
    net.eval()
    path = folder / "brevitas_qonnx.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(net, torch.tensor(x_train[:1]), export_path=str(path))
    return path, x_test[:IMAGES]


def qonnx_executor(path, x):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    model = ModelWrapper(str(path))
    i, o = model.graph.input[0].name, model.graph.output[0].name
    return np.concatenate([execute_onnx(model, {i: x[k:k + 1]})[o] for k in range(len(x))])


def matches_qonnx_executor(path, x):
    """qfab's reference equals qonnx's executor on every output element; returns the graph."""
    graph = load_graph(path)
    ours = reference.dequantize_outputs(graph, reference.run(graph, reference.quantize_inputs(graph, x))[graph.outputs[0]])
    theirs = qonnx_executor(path, x)
    differ = int((np.asarray(ours).reshape(theirs.shape) != theirs).sum())
    assert differ == 0, f"{differ} of {theirs.size} outputs differ from qonnx's executor"
    return graph


@pytest.mark.slow
def test_brevitas_qonnx_imports_with_its_widths_and_matches_the_executor(tmp_path):
    path, x = brevitas_qonnx(tmp_path)
    graph = matches_qonnx_executor(path, x)
    widths = [(n.w_type.bits, n.w_type.signed) for n in graph.nodes if getattr(n, "w_type", None) is not None]
    assert widths == [(4, True)] * 3, widths
    acts = {t.name: (t.qtype.bits, t.qtype.signed) for t in graph.tensors.values()}
    assert sorted(set(acts.values())) == [(4, False), (8, True)], acts
