"""Bit widths and exactness of quantized ONNX models from other tools (issue 10: QCDQ, narrow
widths, float last layers, pool rounding, PTQ of a dead channel, `qfab info` of a float model).

Models are exported by the tests with the real tools (Brevitas, torch.onnx, onnxruntime) and
every output element is compared with onnxruntime.
"""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qfab.compiler import reference
from qfab.compiler.frontends.onnx_qdq_write import save_qdq
from qfab.compiler.info import float_info, format_table
from qfab.compiler.load import load_graph

from .brevitas_models import available, export_qcdq, inputs

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _ort(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def _ours(graph, x):
    return reference.output_codes(graph, reference.run(graph, reference.quantize_inputs(graph, x))[graph.outputs[0]])


def _widths(graph):
    return {n.name: (graph.tensors[n.inputs[0]].qtype.describe(), graph.tensors[n.output].qtype.describe(),
                     n.w_type.describe() if hasattr(n, "w_type") else "-") for n in graph.nodes}


def _codes_equal_ort(path, graph, x):
    """Number of output codes that differ from onnxruntime's (the model ends in Q -> DQ)."""
    y = _ort(path, x)
    q = graph.tensors[graph.outputs[0]].qtype
    theirs = np.rint(y / q.scale + q.zero_point).astype(np.int64)
    ours = _ours(graph, x).reshape(theirs.shape)
    return int((ours != theirs).sum()), ours.size


@pytest.fixture(scope="module")
def brevitas():
    if not available():
        pytest.skip("needs brevitas and onnxoptimizer (the [train] extra)")


@pytest.mark.slow
@pytest.mark.parametrize("scales,pool", [("fixed", "avg"), ("float", "max")])
def test_brevitas_qcdq_imports_4_bit_and_equals_onnxruntime(tmp_path, brevitas, scales, pool):
    """Q -> Clip -> DQ narrows the type (u4 after ReLU, i4 at the input, i4 weights from the
    weights' Clip [-7, 7]); the Clip is a clamp of codes, not of reals. Every output code equals
    onnxruntime's, the average pool included (power-of-two scales: its float32 is exact, and the
    imported pool rounds half to even as onnxruntime does)."""
    path = export_qcdq(tmp_path / "b.onnx", scales=scales, pool=pool, output="int8")
    graph = load_graph(path)
    widths = _widths(graph)
    assert graph.tensors[graph.inputs[0]].qtype.describe() == "i4"
    weighted = [n for n in graph.nodes if hasattr(n, "w_type")]
    assert len(weighted) == 3 and all(n.w_type.describe() == "i4" for n in weighted), widths
    convs = [n for n in graph.nodes if n.kind == "Conv2d"]
    assert all(graph.tensors[n.output].qtype.describe() == "u4" for n in convs), widths
    assert any(n.groups == 8 for n in convs)
    pools = [n for n in graph.nodes if n.kind in ("AvgPool", "MaxPool")]
    assert len(pools) == 1
    if pool == "avg":
        assert pools[0].rounding == "half_even"
    x = inputs()
    n, size = _codes_equal_ort(path, graph, x)
    print(f"{scales}/{pool}: {n} of {size} output codes differ from onnxruntime")
    assert n == 0
    table = format_table(graph)
    assert " i4 " in table and " u4 " in table


@pytest.mark.slow
def test_pool_half_even_is_what_makes_it_exact(tmp_path, brevitas):
    """The same Brevitas model with the pool rounding half up differs from onnxruntime (so the
    equality above can fail)."""
    from qfab.compiler.ops import op_for
    path = export_qcdq(tmp_path / "b.onnx", scales="fixed", pool="avg", output="int8")
    graph = load_graph(path)
    nodes = tuple(op_for(n).with_rounding(n, "half_up") if n.kind == "AvgPool" else n for n in graph.nodes)
    half_up = graph.replace(nodes=nodes)
    x = inputs()
    n, _ = _codes_equal_ort(path, half_up, x)
    assert n > 0


@pytest.mark.slow
def test_brevitas_float_last_layer_is_the_wide_accumulator(tmp_path, brevitas):
    """QuantLinear without an output quantizer (Brevitas's default): the output is the integer
    accumulator (a wide signed type, scale s_in * s_w) and dequantizes to onnxruntime's float
    output within float32 rounding, on every element."""
    path = export_qcdq(tmp_path / "b.onnx", scales="float", pool="avg", output="float")
    notes = []
    graph = load_graph(path, notes=notes)
    out = graph.tensors[graph.outputs[0]].qtype
    assert out.signed and 8 < out.bits <= 32 and out.zero_point == 0
    assert any("accumulator" in note for note in notes)
    x = inputs()
    y = _ort(path, x)
    codes = reference.run(graph, reference.quantize_inputs(graph, x))[graph.outputs[0]]
    ours = reference.dequantize_outputs(graph, codes).reshape(y.shape)
    tol = 1e-5 * np.abs(y).max()
    err = np.abs(ours - y)
    print(f"float output: max |error| {err.max():.3g} (max |y| {np.abs(y).max():.3g}), {out.describe()}")
    assert err.max() <= tol
    assert len(np.unique(_ours(graph, x))) > 100          # real spread, not a constant


@pytest.mark.slow
def test_qdq_writer_keeps_brevitas_widths(tmp_path, brevitas):
    """qfab's QDQ writer writes the narrow types as QCDQ: the round trip keeps every width, and
    onnxruntime on the written model equals the reference on every element."""
    path = export_qcdq(tmp_path / "b.onnx", scales="fixed", pool="avg", output="int8")
    graph = load_graph(path)
    out = tmp_path / "written.onnx"
    save_qdq(graph, out)
    back = load_graph(out)
    assert list(_widths(back).values()) == list(_widths(graph).values())
    assert [n.rounding for n in back.nodes if n.kind == "AvgPool"] == ["half_even"]
    x = inputs()
    np.testing.assert_array_equal(_ours(back, x), _ours(graph, x))
    n, _ = _codes_equal_ort(out, back, x)
    assert n == 0


def _torch_export(model, path, shape):
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), torch.zeros(1, *shape), str(path), input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "N"}}, dynamo=False)
    return path


def _dead_channel_cnn(torch):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 8 * 8, 10))
    with torch.no_grad():
        net[0].weight[3] = 2e-12 * torch.randn_like(net[0].weight[3])     # a dead channel ...
        net[0].bias[3] = 0.7                                               # ... with a live bias
        net[3].weight[5] = 1e-12
        net[3].bias[5] = -0.4
    return net


@pytest.mark.parametrize("multipoint", [0.0, 0.5])
def test_ptq_of_a_dead_channel_floors_the_weight_scale(tmp_path, multipoint):
    """A trained model with a dead channel (max |w| = 2e-12) and a bias: the weight scale is
    floored so that the bias fits 32 bits (as onnxruntime does); the channel's output keeps its
    bias."""
    torch = pytest.importorskip("torch")
    from qfab.compiler.ptq import QuantConfig
    path = _torch_export(_dead_channel_cnn(torch), tmp_path / "dead.onnx", (1, 8, 8))
    x = inputs(256)
    graph = load_graph(path, x, QuantConfig(multipoint=multipoint))
    conv = next(n for n in graph.nodes if n.kind == "Conv2d")
    assert np.all(np.abs(conv.bias) < 1 << 31)
    env = reference.run(graph, reference.quantize_inputs(graph, x), keep_all=True)
    q = graph.tensors[conv.output].qtype
    dead = (env[conv.output][..., 3] - q.zero_point) * q.scale
    assert np.allclose(dead, 0.7, atol=q.scale), "the dead channel lost its bias"
    y = _ort(path, x)
    out = graph.tensors[graph.outputs[0]].qtype
    ours = (_ours(graph, x).astype(np.float64) - out.zero_point) * out.scale
    assert np.corrcoef(ours.reshape(-1), y.reshape(-1))[0, 1] > 0.99
    assert abs(ours[:, 5].mean() - y[:, 5].mean()) < 3 * out.scale


def test_info_of_a_float_model_needs_no_calibration(tmp_path):
    """`qfab info` of a float model (torch.onnx export) shows layers, shapes, parameters and MACs,
    with "float" for the bits."""
    torch = pytest.importorskip("torch")
    path = _torch_export(_dead_channel_cnn(torch), tmp_path / "f.onnx", (1, 8, 8))
    text = float_info(path)
    assert text is not None and "float" in text
    assert "Conv2d" in text and "Dense" in text
    assert str(8 * 8 * 8 * 9) in text                   # the conv's MACs: 8x8 pixels x 8 channels x 9 taps
    assert str(8 * 9 + 8) in text                       # its parameters
    model = onnx.load(str(path))
    assert not any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def test_info_cli_on_a_float_model(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from qfab.cli import main
    path = _torch_export(_dead_channel_cnn(torch), tmp_path / "f.onnx", (1, 8, 8))
    main(["info", str(path)])
    out = capsys.readouterr().out
    assert "float" in out and "Conv2d" in out
