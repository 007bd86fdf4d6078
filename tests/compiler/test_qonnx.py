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


def brevitas_net(bits=4, per_channel=False, fixed=False):
    """``fixed``: Brevitas's fixed-point (power-of-two) quantizers for weights and activations."""
    from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU
    from brevitas.quant import (
        Int8ActPerTensorFixedPoint,
        Int8ActPerTensorFloat,
        Int8WeightPerChannelFloat,
        Int8WeightPerTensorFixedPoint,
        Int8WeightPerTensorFloat,
        Uint8ActPerTensorFixedPoint,
        Uint8ActPerTensorFloat,
    )
    weight = Int8WeightPerChannelFloat if per_channel else Int8WeightPerTensorFloat
    w = dict(weight_quant=Int8WeightPerTensorFixedPoint if fixed else weight, weight_bit_width=bits, bias=False)
    act = dict(act_quant=Uint8ActPerTensorFixedPoint if fixed else Uint8ActPerTensorFloat, bit_width=bits)
    signed_act = Int8ActPerTensorFixedPoint if fixed else Int8ActPerTensorFloat
    return nn.Sequential(
        QuantIdentity(act_quant=signed_act, bit_width=8),
        QuantConv2d(1, 8, 3, padding=1, **w), QuantReLU(**act), nn.MaxPool2d(2),
        QuantConv2d(8, 16, 3, padding=1, **w), QuantReLU(**act), nn.Flatten(),
        QuantLinear(16 * 4 * 4, 10, **w), QuantIdentity(act_quant=signed_act, bit_width=8))


def brevitas_qonnx(folder, steps=40, per_channel=False, dynamo=True, fixed=False):
    """Train the 4-bit net briefly (QAT) on the digits and export it with ``export_qonnx`` (through
    torch.export, Brevitas's default here, or its TorchScript path with ``dynamo=False``)."""
    from brevitas.export import export_qonnx
    x_train, y_train, x_test, _ = digits("NCHW")
    torch.manual_seed(0)
    net = brevitas_net(per_channel=per_channel, fixed=fixed)
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
        export_qonnx(net, torch.tensor(x_train[:1]), export_path=str(path), dynamo=dynamo)
    return path, x_test[:IMAGES]


def qonnx_executor(path, x):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes
    model = ModelWrapper(str(path)).transform(InferShapes())     # the executor needs every shape
    i, o = model.graph.input[0].name, model.graph.output[0].name
    return np.concatenate([execute_onnx(model, {i: x[k:k + 1]})[o] for k in range(len(x))])


def matches_qonnx_executor(path, x):
    """qfab's output codes equal qonnx's executor's outputs (on the output Quant's grid, float32)
    on every element; returns the graph."""
    graph = load_graph(path)
    ours = reference.output_codes(graph, reference.run(graph, reference.quantize_inputs(graph, x))[graph.outputs[0]])
    q = graph.tensors[graph.outputs[0]].qtype
    theirs = qonnx_executor(path, x) / q.scale + q.zero_point
    np.testing.assert_allclose(theirs, np.rint(theirs), atol=1e-3)   # the executor's output is on the grid
    differ = int((ours.reshape(theirs.shape) != np.rint(theirs)).sum())
    assert differ == 0, f"{differ} of {theirs.size} output codes differ from qonnx's executor"
    return graph


@pytest.mark.slow
@pytest.mark.parametrize("per_channel,dynamo", [(False, True), (True, True), (False, False)],
                         ids=["per_tensor", "per_channel", "torchscript"])
def test_brevitas_qonnx_imports_with_its_widths_and_matches_the_executor(tmp_path, per_channel, dynamo):
    path, x = brevitas_qonnx(tmp_path, per_channel=per_channel, dynamo=dynamo)
    import onnx
    model = onnx.load(str(path))
    assert {i.name for i in model.graph.input} & {t.name for t in model.graph.initializer}, \
        "Brevitas no longer lists initializers as graph inputs: this test lost that case"
    graph = matches_qonnx_executor(path, x)
    widths = [(n.w_type.bits, n.w_type.signed) for n in graph.nodes if getattr(n, "w_type", None) is not None]
    assert widths == [(4, True)] * 3, widths
    acts = {t.name: (t.qtype.bits, t.qtype.signed) for t in graph.tensors.values()}
    assert sorted(set(acts.values())) == [(4, False), (8, True)], acts
    assert any(n.w_type.per_channel for n in graph.nodes if getattr(n, "w_type", None)) == per_channel


@pytest.mark.slow
def test_fixed_point_qonnx_rounds_ties_half_even_as_the_executor(tmp_path):
    """Power-of-two scales everywhere (Brevitas fixed-point quantizers): exact ties in every
    requantization, which qonnx's ``Quant`` rounds half to even (``np.round``), and so does every
    imported node: every output equals the executor's; half up differs."""
    from qfab.compiler.ops import op_for
    path, x = brevitas_qonnx(tmp_path, fixed=True)
    graph = matches_qonnx_executor(path, x)
    assert {n.rounding for n in graph.nodes if hasattr(n, "rounding")} == {"half_even"}
    half_up = graph.replace(nodes=tuple(op_for(n).with_rounding(n, "half_up") if hasattr(n, "rounding") else n
                                        for n in graph.nodes))
    codes = reference.quantize_inputs(graph, x)
    assert not np.array_equal(reference.run(half_up, codes)[graph.outputs[0]],
                              reference.run(graph, codes)[graph.outputs[0]])


def _quant_model(path, op, weight=True, **attrs):
    """A one-layer QONNX model (for the operators Brevitas does not write here): MatMul of the
    input by a weight behind ``op`` (``weight``), or ``op`` on the MatMul's output."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.float32(0.5), "s"), numpy_helper.from_array(np.float32(0), "z"),
             numpy_helper.from_array(np.float32(4), "b")]
    ins = {"Quant": ["s", "z", "b"], "BipolarQuant": ["s"], "Trunc": ["s", "z", "b", "b"]}[op]
    dom = "qonnx.custom_op.general"
    if weight:
        nodes = [helper.make_node(op, ["w", *ins], ["wq"], domain=dom, **attrs),
                 helper.make_node("MatMul", ["x", "wq"], ["y"])]
    else:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node(op, ["m", *ins], ["y"], domain=dom,
                                                                                  **attrs)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(dom, 1)])
    import onnx
    onnx.save(model, str(path))
    return path


def test_bipolar_weights_are_read_as_the_bipolar_type(tmp_path):
    from qfab.compiler.frontends.onnx_import import import_onnx
    fg = import_onnx(_quant_model(tmp_path / "m.onnx", "BipolarQuant"))
    fixed = fg.nodes[0].fixed
    assert (fixed.bits, fixed.signed) == (1, True)
    assert set(np.unique(fixed.w_int)) == {-1, 1}


@pytest.mark.parametrize("op,weight,attrs,message", [
    ("Trunc", False, {}, "Trunc (the floor-rounding shift"),
    ("Quant", True, {"rounding_mode": "FLOOR"}, "rounding_mode=FLOOR is not supported"),
    ("Quant", False, {"narrow": 1}, "narrow_range=1 on an activation is not supported"),
    ("BipolarQuant", False, {}, "BipolarQuant on an activation"),
])
def test_unsupported_qonnx_is_refused_by_name(tmp_path, op, weight, attrs, message):
    with pytest.raises(UnsupportedModelError, match=message.replace("(", r"\(")):
        load_graph(_quant_model(tmp_path / "m.onnx", op, weight, **attrs))
