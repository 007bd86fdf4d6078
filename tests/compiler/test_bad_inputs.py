"""Non-finite data in: input floats saturate (infinities, huge values) or are refused (NaN, with
the index); NaN or infinite calibration data and ONNX constants are refused by name
(docs/semantics.md, section 1)."""

import math

import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from qfab.base.errors import QfabError, UnsupportedModelError
from qfab.compiler import calibrate, intops
from qfab.compiler.frontends.onnx_import import import_onnx
from qfab.compiler.load import load_graph


def _brute_force(x, scale, zero_point, qmin, qmax):
    """One element at a time, with Python integers: float32 quotient, half-to-even, saturate."""
    out = []
    for v in np.asarray(x, np.float32).reshape(-1):
        with np.errstate(over="ignore"):                 # an overflowing quotient is inf
            q = np.float32(v) / np.float32(scale) if math.isfinite(v) else v
        if math.isinf(q):
            code = qmax if q > 0 else qmin
        else:
            code = min(max(round(float(q)) + zero_point, qmin), qmax)   # round(): half to even
        out.append(code)
    return np.array(out, dtype=np.int64).reshape(np.shape(x))


SPECIALS = [np.inf, -np.inf, 1e19, -1e19, 9.3e18, 3.4e38, -3.4e38, 1e30, 0.0, -0.0, 0.5, 1.5, 2.5, -2.5,
            127.4999, 128.5, -129.5, 1e-45, 255.5]


@pytest.mark.parametrize("scale, zero_point, bits, signed", [
    (1.0, 0, 8, True), (0.5, 3, 8, False), (1e-3, -7, 4, True), (1e-30, 0, 8, False), (7.5, 255, 8, False),
    (0.05, 1 << 31, 32, False), (0.05, 0, 32, True)])
def test_specials_saturate_like_brute_force(scale, zero_point, bits, signed):
    qmin, qmax = intops.qrange(bits, signed)
    zero_point = min(max(zero_point, qmin), qmax)
    x = np.array(SPECIALS, np.float32)
    got = intops.quantize_float(x, scale, zero_point, qmin, qmax)
    want = _brute_force(x, scale, zero_point, qmin, qmax)
    assert got.dtype == np.int64
    assert got.tolist() == want.tolist()
    assert got[0] == qmax and got[1] == qmin             # +inf, -inf
    assert got[2] == qmax and got[3] == qmin             # finite values beyond int64 after the division


@settings(max_examples=200, deadline=None)
@given(x=st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=20),
       scale=st.floats(1e-6, 1e6), bits=st.integers(1, 8), signed=st.booleans(), data=st.data())
def test_any_finite_or_infinite_input_matches_brute_force(x, scale, bits, signed, data):
    qmin, qmax = intops.qrange(bits, signed)
    zero_point = data.draw(st.integers(qmin, qmax))
    got = intops.quantize_float(np.array(x, np.float32), scale, zero_point, qmin, qmax)
    assert got.tolist() == _brute_force(x, scale, zero_point, qmin, qmax).tolist()


def test_nan_is_refused_with_its_index():
    x = np.zeros((4, 3, 2), np.float32)
    x[2, 1, 0] = np.nan
    x[3, 0, 0] = np.nan
    with pytest.raises(QfabError, match=r"NaN at index \(2, 1, 0\).*2 of 24 elements are NaN"):
        intops.quantize_float(x, 0.1, 0, -128, 127)


def test_reference_quantizes_infinities_to_the_range_ends():
    from qfab.compiler import reference

    from .graphs import dense_graph
    g = dense_graph(k=4)
    q = g.tensors["x"].qtype
    x = np.array([[np.inf, -np.inf, 1e30, -1e30]], np.float32)
    assert reference.quantize_inputs(g, x).tolist() == [[q.qmax, q.qmin, q.qmax, q.qmin]]


# ---- calibration data -------------------------------------------------------------------------

def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_calibration_data_names_the_sample(value):
    x = np.random.default_rng(0).random((20, 64)).astype(np.float32)
    x[7, 33] = value
    x[12, 0] = value
    with pytest.raises(QfabError) as info:
        load_graph(_bundled("digits_mlp.onnx"), x)
    message = str(info.value)
    assert "calibration data: sample 7, element (33,)" in message, message
    assert "2 of 20 samples" in message and str(value) in message


def test_check_samples_matches_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(20):
        x = rng.normal(size=(6, 2, 3))
        bad = rng.random(x.shape) < 0.05
        x[bad] = rng.choice([np.nan, np.inf, -np.inf], size=int(bad.sum()))
        first = next(((i, j, k) for i in range(6) for j in range(2) for k in range(3)
                      if not math.isfinite(x[i, j, k])), None)
        if first is None:
            calibrate.check_samples(x)
            continue
        with pytest.raises(QfabError, match=rf"sample {first[0]}, element \({first[1]}, {first[2]}\)"):
            calibrate.check_samples(x)


def test_activation_range_refuses_non_finite_values():
    with pytest.raises(QfabError, match="1 activation values are NaN or infinite"):
        calibrate.activation_range(np.array([0.0, 1.0, np.inf]))


# ---- ONNX constants and opsets ----------------------------------------------------------------

def _model(w, b=None, opset=17):
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["input", "W"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "B"))
        inputs.append("B")
    graph = helper.make_graph([helper.make_node("Gemm", inputs, ["output"], name="fc", transB=1)], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _write(tmp_path, model):
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weight_names_initializer_and_node(tmp_path, value):
    w = np.ones((3, 4), np.float32)
    w[1, 2] = value
    with pytest.raises(UnsupportedModelError) as info:
        import_onnx(_write(tmp_path, _model(w)))
    message = str(info.value)
    assert "initializer 'W', used by node 'fc' (Gemm)" in message and "index (1, 2)" in message, message
    assert str(np.float32(value)) in message


def test_non_finite_bias_names_initializer(tmp_path):
    b = np.array([0.0, np.nan, 0.0], np.float32)
    with pytest.raises(UnsupportedModelError, match=r"initializer 'B', used by node 'fc' \(Gemm\) holds nan at index \(1,\)"):
        import_onnx(_write(tmp_path, _model(np.ones((3, 4), np.float32), b)))


def test_non_finite_constant_node(tmp_path):
    m = _model(np.ones((3, 4), np.float32))
    const = helper.make_node("Constant", [], ["B"], name="bias_const",
                             value=numpy_helper.from_array(np.array([1.0, np.inf, 0.0], np.float32)))
    m.graph.node.insert(0, const)
    m.graph.node[1].input.append("B")
    with pytest.raises(UnsupportedModelError, match="node 'bias_const' \\(Constant\\): constant 'B'.*inf"):
        import_onnx(_write(tmp_path, m))


def test_finite_model_still_imports(tmp_path):
    fg = import_onnx(_write(tmp_path, _model(np.ones((3, 4), np.float32), np.zeros(3, np.float32))))
    assert fg.nodes


def test_opset_newer_than_onnx_knows_is_refused(tmp_path):
    newest = onnx.defs.onnx_opset_version()
    for opset in (newest + 1, 1000):
        with pytest.raises(UnsupportedModelError, match=rf"opset {opset}, newer than {newest}"):
            import_onnx(_write(tmp_path, _model(np.ones((3, 4), np.float32), opset=opset)))
