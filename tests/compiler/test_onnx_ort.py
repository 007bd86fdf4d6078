"""qfab's reference against onnxruntime on models that onnxruntime's own quantizer wrote.

Every output element is compared. The issue allows at most 1 LSB on at most 0.1% of elements;
each test prints how many differ (run with -s to see) and asserts the bound.
"""

import numpy as np
import onnx
import pytest

from qfab.compiler import reference
from qfab.compiler.datasets import digits
from qfab.compiler.load import load_graph

from .ort_models import ort_quantize, ort_session, residual_cnn

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BUNDLED = {"mlp": "digits_mlp.onnx", "cnn": "digits_cnn.onnx"}


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / BUNDLED[name])


def _data(kind):
    return digits("flat" if kind == "mlp" else "NCHW")


def _ort_codes(path, x, graph):
    """onnxruntime's output as integer codes of qfab's output type (the graph ends in DQ)."""
    y = ort_session(path).run(None, {"input": x})[0]
    q = graph.tensors[graph.outputs[0]].qtype
    return np.rint(y / q.scale + q.zero_point).astype(np.int64)


def _compare(path, x):
    graph = load_graph(path)
    ours = reference.output_codes(graph, reference.run(graph, reference.quantize_inputs(graph, x))[graph.outputs[0]])
    theirs = _ort_codes(path, x, graph)
    diff = np.abs(ours.reshape(theirs.shape) - theirs)
    return graph, diff


def _assert_within_allowance(path, diff):
    n = int((diff > 0).sum())
    print(f"{path.name}: {n} of {diff.size} elements differ, max {diff.max()} LSB")
    assert diff.max() <= 1, f"{n} elements differ, by up to {diff.max()} LSB"
    assert n <= 0.001 * diff.size, f"{n} of {diff.size} elements differ (more than 0.1%)"


CASES = [(kind, fmt, act, pc) for kind in ("mlp", "cnn") for fmt in ("QDQ", "QOperator")
         for act in ("uint8", "int8") for pc in (True, False) if act == "uint8" or pc]


@pytest.mark.parametrize("kind,fmt,act,per_channel", CASES)
def test_digits_models_match_onnxruntime(tmp_path, kind, fmt, act, per_channel):
    x_train, _, x_test, _ = _data(kind)
    path = ort_quantize(_bundled(kind), tmp_path / f"{kind}_{fmt}.onnx", x_train[:256], fmt, act, per_channel)
    graph, diff = _compare(path, x_test)
    assert any(n.kind in ("Dense", "Conv2d") for n in graph.nodes)
    assert graph.metadata["source"] == "onnx-quantized"
    _assert_within_allowance(path, diff)
    assert diff.size == len(x_test) * 10


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_residual_depthwise_gap_match_onnxruntime(tmp_path, fmt, act):
    """Conv, depthwise Conv, residual Add, MaxPool, GlobalAveragePool, Flatten, Gemm."""
    x_train, _, x_test, _ = digits("NCHW")
    path = ort_quantize(residual_cnn(tmp_path / "res.onnx", pool="max"), tmp_path / f"r_{fmt}.onnx",
                        x_train[:200], fmt, act)
    graph, diff = _compare(path, x_test)
    kinds = {n.kind for n in graph.nodes}
    assert {"Add", "GlobalAvgPool", "MaxPool", "Conv2d", "Dense"} <= kinds
    assert any(getattr(n, "groups", 1) > 1 for n in graph.nodes), "depthwise conv was not imported as grouped"
    _assert_within_allowance(path, diff)


@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_qoperator_average_pool_matches_onnxruntime(tmp_path, act):
    x_train, _, x_test, _ = digits("NCHW")
    path = ort_quantize(residual_cnn(tmp_path / "res.onnx", pool="avg"), tmp_path / "r.onnx",
                        x_train[:200], "QOperator", act)
    graph, diff = _compare(path, x_test)
    assert "AvgPool" in {n.kind for n in graph.nodes}
    _assert_within_allowance(path, diff)


def test_qdq_average_pool_rounds_half_even_and_differs_only_by_float_noise(tmp_path):
    """In QDQ form onnxruntime runs AveragePool in float32 (DQ -> AveragePool -> Q, rounding half
    to even): the imported pool rounds half to even too (docs/semantics.md, "Rounding of pools").
    With equal input and output scales, sum/4 is often exactly x.5; when the scale is not a power
    of two, float32 rounding of ``s * q`` and of the sum moves the tie either way, so which way a
    tie goes is not a function of the integers (the same window sum rounds up in one window and
    down in another). Every tensor before the pool agrees exactly; at the pool, every differing
    element is an exact tie of the rational result, and a numpy float32 model of onnxruntime's
    computation reproduces onnxruntime on every element (so the differences are that float noise).
    Half-to-even halves the differences of half-up. With power-of-two scales (Brevitas
    fixed-point models, tests/compiler/test_qdq_widths.py) float32 is exact and qfab equals
    onnxruntime on every element."""
    x_train, _, x_test, _ = digits("NCHW")
    path = ort_quantize(residual_cnn(tmp_path / "res.onnx", pool="avg"), tmp_path / "r.onnx",
                        x_train[:200], "QDQ", "uint8")
    graph = load_graph(path)
    pool = next(n for n in graph.nodes if n.kind == "AvgPool")
    assert pool.rounding == "half_even"
    env = reference.run(graph, reference.quantize_inputs(graph, x_test), keep_all=True)
    model = onnx.load(str(path))
    q_outputs = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    for name in q_outputs:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None))
    sess = ort_session(model.SerializeToString())
    theirs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x_test})))
    order = [n.output for n in graph.nodes]
    checked = 0
    for name in order[:order.index(pool.output)]:
        key = name + "_QuantizeLinear_Output"
        if key in theirs:
            t = theirs[key].astype(np.int64)
            t = t.transpose(0, 2, 3, 1) if t.ndim == 4 else t
            assert np.array_equal(t, env[name]), f"tensor {name!r} differs before the pool"
            checked += 1
    assert checked >= 4
    t = theirs[pool.output + "_QuantizeLinear_Output"].astype(np.int64).transpose(0, 2, 3, 1)
    ours = env[pool.output]
    qi, qo = graph.tensors[pool.input].qtype, graph.tensors[pool.output].qtype
    x = env[pool.input] - qi.zero_point
    b, h, w, c = x.shape
    window_sum = x.reshape(b, h // 2, 2, w // 2, 2, c).sum(axis=(2, 4))
    assert qi.scale == qo.scale
    exact = window_sum / 4.0
    differ = ours != t
    half_up = np.floor(exact + 0.5)
    print(f"AvgPool: {int(differ.sum())} of {ours.size} elements differ (half up: {int((half_up != t).sum())}), "
          "all at exact ties decided by float32 noise")
    assert np.abs(ours - t).max() <= 1
    assert np.all(exact[differ] % 1 == 0.5), "a difference away from a rounding tie"
    assert 2 * differ.sum() < (half_up != t).sum(), "half to even should halve the differences at ties"
    # onnxruntime's float32 computation, emulated: it reproduces every element
    xf = (x.astype(np.float32) * np.float32(qi.scale)).reshape(b, h // 2, 2, w // 2, 2, c)
    total = xf[:, :, 0, :, 0] + xf[:, :, 0, :, 1] + xf[:, :, 1, :, 0] + xf[:, :, 1, :, 1]
    avg = total / np.float32(4)
    emulated = np.clip(np.rint(avg / np.float32(qo.scale) + np.float32(qo.zero_point)), 0, 255)
    assert np.array_equal(emulated, t), f"{int((emulated != t).sum())} elements the float32 model misses"
