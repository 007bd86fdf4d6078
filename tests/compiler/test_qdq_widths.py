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

from .brevitas_models import available, export_narrow_mlp, export_qcdq, inputs

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
    # part of the [train] extra the README's test command installs: missing is a failure, not a skip
    assert available(), "brevitas and onnxoptimizer are missing: pip install -e '.[dev,train]'"


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
    convs = [n for n in graph.nodes if n.kind in ("Conv2d", "DepthwiseConv2d")]
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
def test_brevitas_narrow_range_clip_is_a_clamp(tmp_path, brevitas):
    """A narrow-range activation (Clip [-7, 7] between Q and DQ) is i4 with the output clamp
    [-7, 7] on the layer that makes it; equal to onnxruntime on every output code."""
    path = export_narrow_mlp(tmp_path / "n.onnx")
    graph = load_graph(path)
    fc1 = graph.nodes[0]
    assert graph.tensors[fc1.output].qtype.describe() == "i4"
    assert (fc1.requant.lo, fc1.requant.hi) == (-7, 7)
    x = (np.random.default_rng(0).standard_normal((500, 16)) * 2).astype(np.float32)
    n, size = _codes_equal_ort(path, graph, x)
    assert n == 0, f"{n} of {size} differ"
    import dataclasses
    loose = dataclasses.replace(fc1, requant=dataclasses.replace(fc1.requant, lo=-8))
    n, _ = _codes_equal_ort(path, graph.replace(nodes=(loose, *graph.nodes[1:])), x)
    assert n > 0                                          # the clamp at -7 matters


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
def test_power_of_two_scales_round_every_requantization_half_even(tmp_path, brevitas):
    """Brevitas fixed-point quantizers on weights and activations: every layer's ``s_x * s_w / s_y``
    is a power of two, so exact ties occur in the convolutions, the dense layer and the pool;
    onnxruntime rounds them half to even and so does every imported node: every output code
    equal. Rounding the weighted layers half up instead (the pool still half to even) differs."""
    from qfab.compiler.ops import op_for
    path = export_qcdq(tmp_path / "b.onnx", scales="fixed", pool="avg", output="int8", weights="fixed")
    graph = load_graph(path)
    weighted = [n for n in graph.nodes if hasattr(n, "w_type")]
    assert len(weighted) == 3 and {n.rounding for n in graph.nodes if hasattr(n, "rounding")} == {"half_even"}
    for n in weighted:                   # a power-of-two ratio: M0 is a power of two
        assert all(int(m) & (int(m) - 1) == 0 for m in n.requant.m0), (n.name, n.requant.m0)
    x = inputs(400)
    n, size = _codes_equal_ort(path, graph, x)
    assert n == 0, f"{n} of {size} output codes differ from onnxruntime"
    half_up = graph.replace(nodes=tuple(op_for(n).with_rounding(n, "half_up") if hasattr(n, "w_type") else n
                                        for n in graph.nodes))
    differ, _ = _codes_equal_ort(path, half_up, x)
    print(f"weighted layers half up: {differ} of {size} output codes differ from onnxruntime")
    assert differ > 0


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


def test_wide_types_only_for_outputs_no_node_reads():
    """verify: a graph output may be up to 32 bits wide; a tensor a node reads may not."""
    from qfab.base.errors import VerifyError
    from qfab.compiler.ir import Dense, Requantize, Tensor
    from qfab.compiler.verify import verify

    from .graphs import graph, qtype, requant, weight_type

    rng = np.random.default_rng(0)
    x = Tensor("x", (6,), qtype(4, False, 0, 0.1))
    h = Tensor("h", (4,), qtype(20, True, 0, 0.001))
    dense = Dense("fc", "x", "h", weights=rng.integers(-8, 8, (1, 4, 6)), multipliers=np.ones((1, 4), np.int64),
                  bias=rng.integers(-50, 50, 4), w_type=weight_type(4, 4), requant=requant(4, h, m0=1 << 23, shift=23))
    verify(graph(["x"], [dense], [x, h]))                               # a wide output
    codes = rng.integers(0, 16, (30, 6))
    acc = reference.run(graph(["x"], [dense], [x, h]), codes)["h"]
    assert np.array_equal(acc, codes @ dense.weights[0].T + dense.bias)   # the accumulator itself
    y = Tensor("y", (4,), qtype(8, True, 0, 0.1))
    rq = Requantize("rq", "h", "y", requant(1, y, m0=1, shift=4))
    with pytest.raises(VerifyError, match="only a graph output may be wider than 8"):
        verify(graph(["x"], [dense, rq], [x, h, y], outputs=["h", "y"]))


def _strip_output_quantization(src, dst):
    """The QDQ model ``src`` with its last QuantizeLinear -> DequantizeLinear pair removed: the
    last Gemm's float output is the model output (a float last layer after DQ)."""
    model = onnx.load(str(src))
    g = model.graph
    out = g.output[0].name
    dq = next(n for n in g.node if out in n.output)
    q = next(n for n in g.node if dq.input[0] in n.output)
    assert (q.op_type, dq.op_type) == ("QuantizeLinear", "DequantizeLinear")
    for node in g.node:
        if q.input[0] in node.output:
            node.output[0] = out
    g.node.remove(q)
    g.node.remove(dq)
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize("per_channel", [False, True])
def test_float_gemm_after_dq_outputs_the_accumulator(tmp_path, per_channel):
    """onnxruntime's QDQ digits MLP without its output quantization: qfab's output is the last
    layer's accumulator (wide type); dequantized it equals onnxruntime's float output within
    float32 rounding (per-tensor weights; per-channel weights are requantized to the smallest
    channel scale, exact to 24 bits)."""
    from qfab.compiler.datasets import digits

    from .ort_models import ort_quantize
    from .test_onnx_ort import _bundled
    x_train, _, x_test, _ = digits("flat")
    q = ort_quantize(_bundled("mlp"), tmp_path / "q.onnx", x_train[:256], "QDQ", "uint8", per_channel)
    path = _strip_output_quantization(q, tmp_path / "float_out.onnx")
    graph = load_graph(path)
    out = graph.tensors[graph.outputs[0]].qtype
    assert out.signed and 8 < out.bits <= 32
    y = _ort(path, x_test)
    codes = reference.run(graph, reference.quantize_inputs(graph, x_test))[graph.outputs[0]]
    ours = reference.dequantize_outputs(graph, codes).reshape(y.shape)
    err = np.abs(ours - y).max()
    print(f"per_channel={per_channel}: max |error| {err:.3g}, output step {out.scale:.3g}, {out.describe()}")
    assert err <= 1e-5 * np.abs(y).max()
    # qfab's QDQ writer leaves the wide output in float; it reads back to the same graph
    written = tmp_path / "written.onnx"
    save_qdq(graph, written)
    back = load_graph(written)
    assert back.tensors[back.outputs[0]].qtype == out
    np.testing.assert_array_equal(reference.run(back, reference.quantize_inputs(back, x_test))[back.outputs[0]],
                                  codes)
    assert np.abs(_ort(written, x_test) - ours).max() <= 1e-5 * np.abs(y).max()


def test_pool_rounding_survives_the_model_file(tmp_path):
    """A half-to-even pool keeps its rule through a .qfab file (and verify rejects unknown rules)."""
    from qfab.base.errors import VerifyError
    from qfab.compiler.modelfile import load, save
    from qfab.compiler.ops import op_for
    from qfab.compiler.verify import verify

    from .graphs import avgpool_graph, gap_graph
    for g in (avgpool_graph(), gap_graph()):
        node = g.nodes[0]
        even = g.replace(nodes=(op_for(node).with_rounding(node, "half_even"),))
        save(even, tmp_path / "m.qfab")
        assert load(tmp_path / "m.qfab").nodes[0].rounding == "half_even"
        save(g, tmp_path / "m.qfab")
        assert load(tmp_path / "m.qfab").nodes[0].rounding == "half_up"
        with pytest.raises(VerifyError, match="rounding must be one of"):
            verify(g.replace(nodes=(op_for(node).with_rounding(node, "down"),)))
