"""PyTorch CNNs exported by ``torch.onnx`` (the TorchScript exporter: node names like ``/0/Conv``),
float and quantized by onnxruntime's ``quantize_static``, imported and compared with onnxruntime on
every output element.

The models use the shapes PyTorch writes for common layers: ``torch.mean(x, dim=(2, 3))``
(ReduceMean), residual adds, depthwise convolutions, ``squeeze``, ``flatten``, a ``permute`` before a
flatten (Transpose + Flatten) and a scale by a constant (Mul, Div).
"""

import warnings

import numpy as np
import onnxruntime as ort
import pytest

from qfab.compiler import fgraph, reference
from qfab.compiler.datasets import digits
from qfab.compiler.load import load_graph

from .ort_models import ort_quantize

torch = pytest.importorskip("torch")
nn = torch.nn

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x):
        return self.body(x) + x


class Mean(nn.Module):
    def __init__(self, keepdim=False):
        super().__init__()
        self.keepdim = keepdim

    def forward(self, x):
        return torch.mean(x, dim=(2, 3), keepdim=self.keepdim)


class Squeeze(nn.Module):
    def forward(self, x):
        return x.squeeze(3).squeeze(2)


class Scale(nn.Module):
    def __init__(self, by, divide=False):
        super().__init__()
        self.by, self.divide = by, divide

    def forward(self, x):
        return x / self.by if self.divide else x * self.by


class ChannelsLastFlatten(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1)


def residual_net(scale=True):
    """Conv + BN, a residual block, MaxPool, ``torch.mean`` over H and W, Linear."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), Residual(8), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), *([Scale(0.5)] if scale else []), nn.ReLU(),
                         Mean(), nn.Linear(16, 10))


def depthwise_net(scale=True):
    """A depthwise convolution, a Div, ``mean(keepdim=True)`` + squeeze, Linear. (MaxPool: a QDQ
    AveragePool differs from onnxruntime at float32-decided ties, docs/models.md "Rounding".)"""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                         *([Scale(2.0, divide=True)] if scale else []), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 1), nn.ReLU(), Mean(keepdim=True), Squeeze(), nn.Linear(16, 10))


def flatten_net(scale=True):
    """A strided conv, then a channels-last flatten (Transpose + Flatten) into two Linear layers."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         ChannelsLastFlatten(), nn.Linear(4 * 2 * 2, 16), nn.ReLU(), nn.Linear(16, 10))


NETS = {"residual": residual_net, "depthwise": depthwise_net, "flatten": flatten_net}


def _train_briefly(net, x, y, steps=30, seed=0):
    """A few steps of Adam on the digits, so that weights and activations have real ranges."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    xt, yt = torch.tensor(x), torch.tensor(y, dtype=torch.long)
    net.train()
    for i in range(steps):
        sl = slice((i * 64) % (len(x) - 64), (i * 64) % (len(x) - 64) + 64)
        opt.zero_grad()
        nn.functional.cross_entropy(net(xt[sl]), yt[sl]).backward()
        opt.step()
    return net.eval()


def export(net, path, x_example, dynamo=False):
    """``torch.onnx.export``: the TorchScript exporter (``dynamo=False``, node names like ``/0/Conv``)
    or the default torch.export-based one (its warnings and progress lines are not ours)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(net, (torch.tensor(x_example[:1]),), str(path), dynamo=True, input_names=["input"],
                              output_names=["output"], external_data=False)
        else:
            torch.onnx.export(net, (torch.tensor(x_example[:1]),), str(path), dynamo=False, input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": {0: "n"}, "output": {0: "n"}})
    return path


def exported(kind, folder, fmt="float", dynamo=False):
    """Train ``kind`` briefly on the digits, export it, and quantize it (``fmt`` QDQ/QOperator).

    The quantized nets leave out the scale by a constant: between two quantized tensors it is a
    requantization by a factor, which qfab does not read (docs/models.md)."""
    x_train, y_train, x_test, _ = digits("NCHW")
    torch.manual_seed(0)
    net = _train_briefly(NETS[kind](scale=fmt == "float"), x_train, y_train)
    path = export(net, folder / f"{kind}.onnx", x_train, dynamo)
    if fmt != "float":
        path = ort_quantize(path, folder / f"{kind}_{fmt}.onnx", x_train[:256], fmt=fmt)
    return path, x_train, x_test


def ort_run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def quantized_matches_onnxruntime(path, x):
    """qfab's reference equals onnxruntime on every output code; returns the graph."""
    graph = load_graph(path)
    ours = reference.output_codes(graph, reference.run(graph, reference.quantize_inputs(graph, x))[graph.outputs[0]])
    q = graph.tensors[graph.outputs[0]].qtype
    theirs = np.rint(ort_run(path, x) / q.scale + q.zero_point).astype(np.int64)
    differ = int((ours.reshape(theirs.shape) != theirs).sum())
    assert differ == 0, f"{differ} of {theirs.size} output codes differ from onnxruntime"
    return graph


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("kind", sorted(NETS))
def test_float_export_imports_and_matches_onnxruntime(tmp_path, kind, dynamo):
    from qfab.compiler.frontends.onnx_import import import_onnx
    path, _, x_test = exported(kind, tmp_path, dynamo=dynamo)
    fg = import_onnx(path)
    assert dynamo or any("/" in n.name for n in fg.nodes), "the exporter's node names were not kept"
    x = x_test[:1] if dynamo else x_test[:64]          # the torch.export graph has a static batch of 1
    ours = fgraph.forward(fg, reference.to_ir_layout(fg, x))[fg.outputs[0]]
    np.testing.assert_allclose(ours, ort_run(path, x), rtol=1e-4, atol=1e-4)
    if kind == "depthwise":
        assert any(n.groups == 8 for n in fg.nodes), "the depthwise convolution was not imported as grouped"
    if kind != "flatten":
        assert any(n.kind == "GlobalAvgPool" for n in fg.nodes), "torch.mean was not read as a global pool"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
@pytest.mark.parametrize("kind", sorted(NETS))
def test_quantized_export_matches_onnxruntime(tmp_path, kind, fmt):
    path, _, x_test = exported(kind, tmp_path, fmt)
    quantized_matches_onnxruntime(path, x_test[:200])
