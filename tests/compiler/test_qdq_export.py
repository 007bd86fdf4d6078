"""IR graph -> QDQ ONNX: the qfab importer reads it back to the same integers, and onnxruntime
agrees with qfab's reference within the issue's allowance (at most 1 LSB on at most 0.1% of the
output elements; each test prints how many differ, run with -s to see). No torch needed."""

import numpy as np
import pytest

from qfab.base.errors import QfabError
from qfab.compiler import reference
from qfab.compiler.datasets import digits
from qfab.compiler.frontends.onnx_import import import_onnx
from qfab.compiler.frontends.onnx_qdq_write import qdq_model, save_qdq
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import QuantConfig, quantize

from .ort_models import ort_session

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MODELS = {"mlp": ("digits_mlp.onnx", "flat"), "cnn": ("digits_cnn.onnx", "NCHW")}


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


def _ptq(kind, bits, **options):
    file, layout = MODELS[kind]
    fg = import_onnx(_bundled(file))
    x_train, _, x_test, _ = digits(layout)
    x_ir = x_train.transpose(0, 2, 3, 1) if layout == "NCHW" else x_train
    return quantize(fg, x_ir[:400], QuantConfig(w_bits=bits, a_bits=bits, calib_method="mse", **options)), x_test


def _codes(graph, x):
    return reference.run(graph, reference.quantize_inputs(graph, x))[graph.outputs[0]]


def assert_same_integers(graph, other):
    """Same nodes, integer weights, biases, scales, zero points and clamps."""
    assert [n.kind for n in graph.nodes] == [n.kind for n in other.nodes]
    for a, b in zip(graph.nodes, other.nodes):
        if hasattr(a, "w_type"):
            np.testing.assert_array_equal(a.weights, b.weights, err_msg=a.name)
            np.testing.assert_array_equal(a.bias, b.bias, err_msg=a.name)
            np.testing.assert_array_equal(a.w_type.scales, b.w_type.scales, err_msg=a.name)
            np.testing.assert_array_equal(a.requant.m0, b.requant.m0, err_msg=a.name)
            np.testing.assert_array_equal(a.requant.shift, b.requant.shift, err_msg=a.name)
            assert (a.requant.lo, a.requant.hi) == (b.requant.lo, b.requant.hi), a.name
            assert a.w_type.describe() == b.w_type.describe(), a.name
    pairs = [(graph.inputs[0], other.inputs[0])] + [(a.output, b.output) for a, b in zip(graph.nodes, other.nodes)]
    for mine, theirs in pairs:
        q, r = graph.tensors[mine].qtype, other.tensors[theirs].qtype
        assert (q.scale, q.zero_point, q.signed, q.bits) == (r.scale, r.zero_point, r.signed, r.bits), mine
        assert graph.tensors[mine].shape == other.tensors[theirs].shape, mine


def ort_agreement(path, graph, x):
    """``(n_differing, max_lsb, size)`` of onnxruntime's output codes against the reference.

    qfab's 8-bit weights use the full int8 range, which onnxruntime's fused u8 x s8 kernels saturate
    on CPUs without VNNI (tests/compiler/ort_models.py): the session runs the QDQ graph as defined."""
    y = ort_session(path, by_definition=True).run(None, {"input": x})[0]
    q = graph.tensors[graph.outputs[0]].qtype
    theirs = np.rint(y / q.scale + q.zero_point).astype(np.int64)
    diff = np.abs(reference.output_codes(graph, _codes(graph, x)).reshape(theirs.shape) - theirs)
    return int((diff > 0).sum()), int(diff.max()), diff.size


def assert_qdq_roundtrip(graph, x, path):
    save_qdq(graph, path)
    back = load_graph(path)
    assert back.metadata["source"] == "onnx-quantized"
    assert_same_integers(graph, back)
    np.testing.assert_array_equal(_codes(back, x), _codes(graph, x))
    n, worst, size = ort_agreement(path, graph, x)
    print(f"{path.name}: onnxruntime differs from the reference on {n} of {size} elements, max {worst} LSB")
    assert worst <= 1, f"{n} elements differ, by up to {worst} LSB"
    assert n <= 0.001 * size, f"{n} of {size} elements differ (more than 0.1%)"
    return back


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_ptq_graph_roundtrips_and_matches_onnxruntime(tmp_path, kind, bits):
    graph, x_test = _ptq(kind, bits)
    assert_qdq_roundtrip(graph, x_test, tmp_path / f"{kind}_w{bits}a{bits}.onnx")


def test_signed_activations_roundtrip(tmp_path):
    graph, x_test = _ptq("cnn", 4, activations="signed")
    back = assert_qdq_roundtrip(graph, x_test, tmp_path / "cnn_signed.onnx")
    assert back.tensors[back.outputs[0]].qtype.signed


def test_narrow_types_are_written_as_qcdq(tmp_path):
    """A 4-bit graph is written QCDQ (Q -> Clip -> DQ, Clip of the weight codes) and reads back
    with its 4-bit widths; an 8-bit graph has no Clip (uint8 storage clamps to [0, 255] itself)."""
    graph, _ = _ptq("mlp", 4)
    model = qdq_model(graph)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == len(graph.tensors)
    narrow = [t for t in graph.tensors.values() if t.qtype.bits < 8]
    weighted = [n for n in graph.nodes if hasattr(n, "w_type")]
    assert narrow and all(n.w_type.bits == 4 for n in weighted)
    assert ops.count("Clip") == len(narrow) + len(weighted)
    path = tmp_path / "mlp4.onnx"
    save_qdq(graph, path)
    back = load_graph(path)
    def widths(g):
        return [g.tensors[t].qtype.describe() for t in (g.inputs[0], *(n.output for n in g.nodes))]
    assert widths(back) == widths(graph) and "u4" in widths(graph)
    assert [n.w_type.describe() for n in back.nodes if hasattr(n, "w_type")] == ["i4"] * len(weighted)
    graph8, _ = _ptq("mlp", 8)
    ops8 = [n.op_type for n in qdq_model(graph8).graph.node]
    assert "Clip" not in ops8 and "Relu" not in ops8


def test_multipoint_graph_is_rejected():
    graph, _ = _ptq("mlp", 2, multipoint=0.5)
    with pytest.raises(QfabError, match="multipoint weights have no QDQ form"):
        qdq_model(graph)
