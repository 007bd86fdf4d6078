"""The ONNX model zoo's MNIST CNN (mnist-8) in float, QDQ and QOperator form.

No wheel installed here ships the zoo's ``mnist-8.onnx`` and tests do not download, so the test
builds the zoo's architecture with PyTorch, trains it briefly on the digits (upscaled to 28 x 28),
exports it with ``torch.onnx`` and writes it the way the zoo file is written (CNTK's export): the
convolutions with ``auto_pad=SAME_UPPER`` and separate ``(C, 1, 1)`` bias Adds, a Reshape of the
constant ``(16, 4, 4, 10)`` weight to ``(256, 10)`` before the MatMul, a ``(1, 10)`` bias Add, a
Reshape to ``[1, 256]``, initializers listed as graph inputs (IR version 3). onnxruntime's
``quantize_static`` then writes the QDQ and QOperator forms from that file, as a user would.
"""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from qfab.compiler import fgraph, reference
from qfab.compiler.datasets import digits
from qfab.compiler.frontends.onnx_import import import_onnx
from qfab.compiler.load import load_graph

from .ort_models import ort_session

torch = pytest.importorskip("torch")
nn = torch.nn

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

IMAGES = 60


class Mnist8(nn.Module):
    """The zoo's mnist-8: Conv5x5(8)+b, ReLU, MaxPool2, Conv5x5(16)+b, ReLU, MaxPool3, MatMul(256, 10)+b."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 5, padding=2, bias=False)
        self.bias1 = nn.Parameter(torch.zeros(8, 1, 1))
        self.conv2 = nn.Conv2d(8, 16, 5, padding=2, bias=False)
        self.bias2 = nn.Parameter(torch.zeros(16, 1, 1))
        self.weight3 = nn.Parameter(torch.randn(16, 4, 4, 10) * 0.05)
        self.bias3 = nn.Parameter(torch.zeros(1, 10))

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x) + self.bias1), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x) + self.bias2), 3)
        return x.reshape(1, 256) @ self.weight3.reshape(256, 10) + self.bias3


def mnist_images():
    """The digits as the zoo model's (1, 1, 28, 28) inputs: 8 x 8 upscaled 3x, padded by 2."""
    x_train, y_train, x_test, _ = digits("NCHW")
    up = lambda x: np.pad(np.kron(x, np.ones((1, 1, 3, 3), np.float32)), ((0, 0), (0, 0), (2, 2), (2, 2)))  # noqa: E731
    return up(x_train), y_train, up(x_test)


def _zoo_style(path):
    """Rewrite the export the way the zoo file is: SAME_UPPER instead of pads, initializers as inputs."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.op_type == "Conv":
            keep = [a for a in node.attribute if a.name != "pads"]
            del node.attribute[:]
            node.attribute.extend(keep + [helper.make_attribute("auto_pad", "SAME_UPPER")])
    known = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if init.name not in known:
            model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    model.ir_version = 3
    onnx.save(model, str(path))


def zoo_mnist(folder, fmt="float", pre_process=True):
    x_train, y_train, x_test = mnist_images()
    torch.manual_seed(0)
    net = Mnist8()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for i in range(60):                              # batch 1, as the model's Reshape fixes it
        opt.zero_grad()
        nn.functional.cross_entropy(net(torch.tensor(x_train[i:i + 1])), torch.tensor(y_train[i:i + 1])).backward()
        opt.step()
    path = folder / "mnist-8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.tensor(x_train[:1]),), str(path), dynamo=False, opset_version=8,
                          do_constant_folding=False, input_names=["Input3"], output_names=["Plus214_Output_0"])
    _zoo_style(path)
    if fmt != "float":
        path = ort_quantize_batch1(path, folder / f"mnist-8_{fmt}.onnx", x_train[:100], fmt, pre_process)
    return path, x_train, x_test[:IMAGES]


def ort_quantize_batch1(path, out, calib, fmt, pre_process=True):
    """``quantize_static``, calibrating one image at a time (the model's Reshape fixes the batch to 1).

    With ``pre_process`` onnxruntime's documented recipe: ``quant_pre_process`` first (it folds the
    bias Adds into the convolutions and the MatMul + Add into a Gemm with a ``(1, 10)`` bias), uint8
    activations. Without it the file keeps the zoo's shapes: the bias Adds (QDQ: the convolution's
    output quantized, then the sum quantized again; QOperator: a QLinearAdd of a constant), and the
    reshaped MatMul weight quantized as an activation; the activations are then symmetric int8 so
    that this weight has 8-bit codes (uint8 with a zero point needs 9 bits, which qfab refuses).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    if pre_process:
        pre = str(out) + ".pre.onnx"
        quant_pre_process(str(path), pre, skip_symbolic_shape=True)
        path = pre

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"Input3": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    # reduce_range: 7-bit weights, exact in onnxruntime's u8 x s8 kernels with or without VNNI
    # (tests/compiler/ort_models.py)
    quantize_static(str(path), str(out), Reader(), weight_type=QuantType.QInt8, reduce_range=True,
                    activation_type=QuantType.QUInt8 if pre_process else QuantType.QInt8,
                    quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator, per_channel=False,
                    extra_options={} if pre_process else {"ActivationSymmetric": True})
    return out


def ort_run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"Input3": x[i:i + 1]})[0] for i in range(len(x))])


def test_zoo_mnist_float_imports_and_matches_onnxruntime(tmp_path):
    path, _, x = zoo_mnist(tmp_path)
    model = onnx.load(str(path))
    assert any(a.s == b"SAME_UPPER" for n in model.graph.node for a in n.attribute), "not written like the zoo"
    assert {i.name for i in model.graph.initializer} <= {i.name for i in model.graph.input}
    fg = import_onnx(path)
    assert [n.kind for n in fg.nodes] == ["Conv2d", "MaxPool", "Conv2d", "MaxPool", "Reshape", "Dense"]
    ours = fgraph.forward(fg, reference.to_ir_layout(fg, x))[fg.outputs[0]]
    np.testing.assert_allclose(ours, ort_run(path, x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("pre_process", [True, False])
@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_zoo_mnist_quantized_by_onnxruntime_matches_every_element(tmp_path, fmt, pre_process):
    path, _, x = zoo_mnist(tmp_path, fmt, pre_process)
    notes = []
    graph = load_graph(path, notes=notes)
    assert [type(n).__name__ for n in graph.nodes] == ["Conv2d", "MaxPool", "Conv2d", "MaxPool", "Reshape", "Dense"]
    assert any("SAME_UPPER" in note for note in notes)
    ours = reference.output_codes(graph, reference.run(graph, reference.quantize_inputs(graph, x))[graph.outputs[0]])
    q = graph.tensors[graph.outputs[0]].qtype
    theirs = np.rint(ort_run(path, x) / q.scale + q.zero_point).astype(np.int64)
    differ = int((ours.reshape(theirs.shape) != theirs).sum())
    assert differ == 0, f"{differ} of {theirs.size} output codes differ from onnxruntime"


def test_a_tensor_quantized_twice_is_requantized_exactly(tmp_path):
    """``Q(s1) -> DQ -> Q(s2) -> DQ`` (a tensor quantized twice with different parameters, as the
    zoo's raw QDQ form writes around its bias Adds) becomes a Requantize node, equal to onnxruntime."""
    from onnx import TensorProto, numpy_helper
    inits = [numpy_helper.from_array(np.float32(v), n) for n, v in (("s1", 0.05), ("s2", 0.13))] + \
        [numpy_helper.from_array(np.uint8(v), n) for n, v in (("z1", 3), ("z2", 140))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s1", "z1"], ["q1"]),
             helper.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["d1"]),
             helper.make_node("QuantizeLinear", ["d1", "s2", "z2"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])], inits)
    path = tmp_path / "twice.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    graph = load_graph(path)
    assert [type(n).__name__ for n in graph.nodes] == ["Requantize"]
    x = np.random.default_rng(0).uniform(-1, 12, (50, 64)).astype(np.float32)
    ours = reference.dequantize_outputs(graph, reference.run(graph, reference.quantize_inputs(graph, x))[graph.outputs[0]])
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(np.rint(np.asarray(ours) / 0.13), np.rint(theirs / np.float32(0.13)))


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
def test_reshape_of_a_quantized_weight_and_same_padding(tmp_path, mode):
    """The zoo's Reshape of a constant weight behind a DequantizeLinear (the Reshape moves onto the
    integer codes) and an even kernel with ``auto_pad`` (SAME_UPPER and SAME_LOWER pad differently):
    qfab's reference equals onnxruntime on every output code."""
    from onnx import TensorProto, numpy_helper
    rng = np.random.default_rng(1)
    f = lambda v, n: numpy_helper.from_array(np.asarray(v, np.float32), n)  # noqa: E731
    inits = [f(1 / 255, "sx"), numpy_helper.from_array(np.uint8(0), "zx"), f(0.02, "sw"),
             numpy_helper.from_array(np.int8(0), "zw"), f(0.05, "sy"), numpy_helper.from_array(np.uint8(0), "zy"),
             numpy_helper.from_array(rng.integers(-100, 100, (2, 1, 2, 2)).astype(np.int8), "wc"),
             numpy_helper.from_array(rng.integers(-100, 100, (2, 4, 4, 3)).astype(np.int8), "wd"),
             numpy_helper.from_array(np.array([32, 3], np.int64), "shape"), f(0.3, "sz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wc", "sw", "zw"], ["wcd"]),
             helper.make_node("Conv", ["xd", "wcd"], ["c"], auto_pad=mode, kernel_shape=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "sy", "zy"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "sy", "zy"], ["rd"]),
             helper.make_node("Flatten", ["rd"], ["fl"], axis=1),
             helper.make_node("DequantizeLinear", ["wd", "sw", "zw"], ["wdd"]),
             helper.make_node("Reshape", ["wdd", "shape"], ["w2"]),
             helper.make_node("MatMul", ["fl", "w2"], ["m"]),
             helper.make_node("QuantizeLinear", ["m", "sz", "zy"], ["mq"]),
             helper.make_node("DequantizeLinear", ["mq", "sz", "zy"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    notes = []
    graph = load_graph(path, notes=notes)
    assert any(f"auto_pad={mode}" in note for note in notes)
    x = rng.uniform(0, 1, (200, 1, 4, 4)).astype(np.float32)
    ours = reference.output_codes(graph, reference.run(graph, reference.quantize_inputs(graph, x))[graph.outputs[0]])
    # weights up to +-100 saturate onnxruntime's fused u8 x s8 Conv on CPUs without VNNI
    # (tests/compiler/ort_models.py): the QDQ graph is run as defined
    theirs = ort_session(path, by_definition=True).run(None, {"x": x})[0]
    np.testing.assert_array_equal(ours.reshape(theirs.shape), np.rint(theirs / np.float32(0.3)).astype(np.int64))
