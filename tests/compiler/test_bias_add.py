"""BiasAdd: a constant added to an already quantized tensor (a QDQ ``DQ -> Add(DQ(constant)) -> Q``,
a QOperator ``QLinearAdd`` of a constant), imported as its own node with both roundings kept.

Against onnxruntime on every input code of every channel (uint8 and int8, random scales and zero
points, per-channel constants of a feature map and per-element constants of a vector, quantized
and float constants, onnxruntime's fused kernels and its QDQ graph as defined), with power-of-two
scales where every other sum is an exact tie (half to even, as onnxruntime), after a channels-first
Flatten; the node's verification, reference, .qfab file and QDQ form; the import's errors."""

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qfab.base.errors import QfabError, UnsupportedModelError, VerifyError
from qfab.compiler import modelfile, reference
from qfab.compiler.frontends.onnx_qdq_write import save_qdq
from qfab.compiler.ir import BiasAdd, Tensor
from qfab.compiler.load import load_graph
from qfab.compiler.ops import op_for

from .graphs import graph, qtype
from .ort_models import ort_session

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MAP, VECTOR = (8, 4, 4), (24,)          # ONNX shapes (C, H, W) and (K,)


def _init(value, name):
    return numpy_helper.from_array(np.asarray(value), name)


def _save(path, nodes, inits, in_shape, out_shape):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, *in_shape])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, *out_shape])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]),
              str(path))
    return path


def constant_add_model(path, fmt, dtype, shape, constant, seed, scales=None):
    """``x -> Q -> (QLinearAdd of a constant | DQ -> Add(DQ(constant) or a float constant) -> Q)
    -> DQ``: a per-channel ``(C, 1, 1)`` constant on a map, ``(1, K)`` on a vector. Returns the
    path and the input codes (every code of the type in every channel) as floats."""
    rng = np.random.default_rng(seed)
    np_t = np.uint8 if dtype == "u8" else np.int8
    lo, hi = int(np.iinfo(np_t).min), int(np.iinfo(np_t).max)
    sx, sc, sy = scales or [np.float32(v) for v in rng.uniform(0.004, 0.1, 3)]
    zx, zc, zy = (np_t(v) for v in rng.integers(lo // 2, hi // 2 + 1, 3))
    c_shape = (shape[0], 1, 1) if len(shape) == 3 else (1, shape[0])
    codes = rng.integers(lo, hi + 1, c_shape).astype(np_t)
    inits = [_init(np.float32(sx), "sx"), _init(zx, "zx"), _init(np.float32(sy), "sy"), _init(zy, "zy")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"])]
    if fmt == "QOperator":
        inits += [_init(codes, "c"), _init(np.float32(sc), "sc"), _init(zc, "zc")]
        nodes.append(helper.make_node("QLinearAdd", ["xq", "sx", "zx", "c", "sc", "zc", "sy", "zy"], ["yq"],
                                      domain="com.microsoft"))
    else:
        nodes.append(helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]))
        if constant == "float":
            real = ((codes.astype(np.float32) - np.float32(zc)) * np.float32(sc)).astype(np.float32)
            inits.append(_init(real, "cd"))
        else:
            inits += [_init(codes, "c"), _init(np.float32(sc), "sc"), _init(zc, "zc")]
            nodes.append(helper.make_node("DequantizeLinear", ["c", "sc", "zc"], ["cd"]))
        nodes += [helper.make_node("Add", ["xd", "cd"], ["s"]), helper.make_node("QuantizeLinear", ["s", "sy", "zy"], ["yq"])]
    nodes.append(helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"]))
    _save(path, nodes, inits, shape, shape)
    # every code in every channel: channel c of item b, position p holds code (b * positions + p + 37 c)
    positions = int(np.prod(shape[1:]))
    items = -(-(hi - lo + 1) // positions)
    q = (np.arange(items)[:, None, None] * positions + np.arange(positions)[None, None, :]
         + 37 * np.arange(shape[0])[None, :, None]) % (hi - lo + 1) + lo
    q = q.reshape(items, *shape) if len(shape) == 3 else q.reshape(items, shape[0])
    return path, ((q - int(zx)) * np.float32(sx)).astype(np.float32), q


def _codes(graph_, x):
    return reference.output_codes(graph_, reference.run(graph_, reference.quantize_inputs(graph_, x))[graph_.outputs[0]])


def _ort_codes(path, x, graph_, by_definition):
    y = ort_session(path, by_definition=by_definition).run(None, {"x": x})[0]
    q = graph_.tensors[graph_.outputs[0]].qtype
    return np.rint(y / np.float32(q.scale) + q.zero_point).astype(np.int64)


CASES = [(fmt, dtype, layout, constant) for fmt in ("QOperator", "QDQ") for dtype in ("u8", "i8")
         for layout in ("map", "vector") for constant in (("quantized", "float") if fmt == "QDQ" else ("quantized",))]


@pytest.mark.parametrize("fmt, dtype, layout, constant", CASES)
def test_constant_add_equals_onnxruntime_on_every_code(tmp_path, fmt, dtype, layout, constant):
    """A BiasAdd node, equal to onnxruntime on every input code of every channel, with five
    random sets of scales and zero points: through its fused integer kernels and through the
    QDQ graph as defined (DequantizeLinear, float Add, QuantizeLinear)."""
    shape = MAP if layout == "map" else VECTOR
    for seed in range(5):
        path, x, q = constant_add_model(tmp_path / "m.onnx", fmt, dtype, shape, constant, seed)
        notes = []
        g = load_graph(path, notes=notes)
        assert [type(n).__name__ for n in g.nodes] == ["BiasAdd"]
        assert g.nodes[0].rounding == "half_even"
        assert any("float constant" in n for n in notes) == (constant == "float")
        ir_q = q.transpose(0, 2, 3, 1) if layout == "map" else q
        np.testing.assert_array_equal(reference.quantize_inputs(g, x), ir_q)       # every code goes in
        ours = _codes(g, x)
        for by_definition in (False, True):
            theirs = _ort_codes(path, x, g, by_definition)
            differ = int((ours.reshape(theirs.shape) != theirs).sum())
            assert differ == 0, f"seed {seed}: {differ} of {theirs.size} codes differ (by_definition={by_definition})"


def test_power_of_two_scales_round_exact_ties_half_to_even(tmp_path):
    """With power-of-two scales every step of onnxruntime's float arithmetic is exact and every
    other sum is an exact tie: the imported node rounds them half to even and equals onnxruntime on
    every code; the same node rounding half up differs."""
    scales = [np.float32(2.0 ** -3), np.float32(2.0 ** -4), np.float32(2.0 ** -2)]
    for fmt in ("QOperator", "QDQ"):
        path, x, _ = constant_add_model(tmp_path / "m.onnx", fmt, "u8", MAP, "quantized", 1, scales)
        g = load_graph(path)
        theirs = _ort_codes(path, x, g, by_definition=False)
        assert (_codes(g, x).reshape(theirs.shape) == theirs).all()
        up = g.replace(nodes=tuple(op_for(n).with_rounding(n, "half_up") for n in g.nodes))
        assert (_codes(up, x).reshape(theirs.shape) != theirs).mean() > 0.05


def test_bias_add_after_a_channels_first_flatten(tmp_path):
    """``Flatten`` of an (8, 3, 3) map, ``Add`` of a (1, 72) constant in ONNX's (C, H, W) order,
    then a MatMul: the constant is permuted to the IR's (H, W, C) order like the MatMul's weights;
    the sum's codes and every output code equal onnxruntime."""
    rng = np.random.default_rng(3)
    s = {n: np.float32(v) for n, v in zip(("sx", "sf", "sc", "sa", "sw", "sy"), (0.02, 0.02, 0.01, 0.05, 0.01, 0.2137))}
    inits = [_init(v, n) for n, v in s.items()] + [_init(np.int8(0), "z"),
                                                  _init(rng.integers(-100, 100, (1, 72)).astype(np.int8), "c"),
                                                  _init(rng.integers(-60, 60, (72, 5)).astype(np.int8), "w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "z"], ["xd"]),
             helper.make_node("Flatten", ["xd"], ["f"], axis=1),
             helper.make_node("QuantizeLinear", ["f", "sf", "z"], ["fq"]),
             helper.make_node("DequantizeLinear", ["fq", "sf", "z"], ["fd"]),
             helper.make_node("DequantizeLinear", ["c", "sc", "z"], ["cd"]),
             helper.make_node("Add", ["fd", "cd"], ["a"]),
             helper.make_node("QuantizeLinear", ["a", "sa", "z"], ["aq"]),
             helper.make_node("DequantizeLinear", ["aq", "sa", "z"], ["ad"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "z"], ["wd"]),
             helper.make_node("MatMul", ["ad", "wd"], ["m"]),
             helper.make_node("QuantizeLinear", ["m", "sy", "z"], ["mq"]),
             helper.make_node("DequantizeLinear", ["mq", "sy", "z"], ["y"])]
    path = _save(tmp_path / "flat.onnx", nodes, inits, (8, 3, 3), (5,))
    g = load_graph(path)
    assert [type(n).__name__ for n in g.nodes] == ["Reshape", "BiasAdd", "Dense"]
    model = onnx.load(str(path))                    # onnxruntime also gives the sum's codes
    model.graph.output.append(helper.make_tensor_value_info("aq", TensorProto.INT8, None))
    x = rng.uniform(-2.5, 2.5, (300, 8, 3, 3)).astype(np.float32)
    y, sums = ort_session(model.SerializeToString(), by_definition=True).run(None, {"x": x})
    values = reference.run(g, reference.quantize_inputs(g, x), keep_all=True)
    ir_to_onnx = np.arange(72).reshape(8, 3, 3).transpose(1, 2, 0).reshape(-1)
    ours = np.empty_like(sums, dtype=np.int64)
    ours[:, ir_to_onnx] = values[g.nodes[1].output]
    assert (ours == sums).all(), f"{(ours != sums).sum()} of {sums.size} codes of the sum differ"
    theirs = np.rint(y / s["sy"]).astype(np.int64)
    assert (values[g.outputs[0]] == theirs).all(), f"{(values[g.outputs[0]] != theirs).sum()} output codes differ"
    assert len(np.unique(theirs)) > 20


# ---- the node -----------------------------------------------------------------------------------

def bias_add_graph(shape=(2, 3, 4), bias=(5, -7, 1 << 20, 0), m_a=3 << 20, shift=22, rounding="half_up",
                   lo=None, hi=None):
    x = Tensor("x", shape, qtype(8, False, 100, 0.1))
    y = Tensor("y", shape, qtype(8, True, -3, 0.2))
    node = BiasAdd("ba", "x", "y", m_a=m_a, shift=shift, bias=np.asarray(bias, np.int64),
                   lo=y.qtype.qmin if lo is None else lo, hi=y.qtype.qmax if hi is None else hi, rounding=rounding)
    return graph(["x"], [node], [x, y])


def test_reference_adds_the_channels_constant_and_rounds():
    """``clamp(zy + round(m_a (x - zx) + bias[c], shift))``, ``c`` the last axis; exact ties half
    up or half to even."""
    g = bias_add_graph(shape=(1, 2, 2), bias=(2, 6), m_a=4, shift=2, lo=-4, hi=100)     # zx 100, zy -3
    x = np.array([[[[101, 99], [98, 100]]]])           # (B, H, W, C): x - zx = [[1, -1], [-2, 0]]
    # (4 (x - zx) + bias[c]) / 4 = [[1.5, 0.5], [-1.5, 1.5]]
    np.testing.assert_array_equal(reference.run(g, x)["y"], [[[[2 - 3, 1 - 3], [-1 - 3, 2 - 3]]]])
    even = g.replace(nodes=(dataclasses.replace(g.nodes[0], rounding="half_even"),))
    np.testing.assert_array_equal(reference.run(even, x)["y"], [[[[2 - 3, 0 - 3], [-4, 2 - 3]]]])   # -5 clamps


@pytest.mark.parametrize("change, message", [
    (dict(bias=np.array([1, 2, 3])), r"bias has shape \(3,\), expected \(4,\)"),
    (dict(bias=np.array([1.0, 2, 3, 4])), r"bias must be an integer array"),
    (dict(m_a=1 << 24), r"m_a must be an integer in \[0, 16777216\)"),
    (dict(shift=63), r"shift must be in 0..62"),
    (dict(bias=np.array([1 << 61, 0, 0, 0])), r"m_a \* \(x - zx\) \+ bias does not fit 62 bits"),
    (dict(lo=-200), r"clamp \[-200, 127\] must lie inside"),
    (dict(rounding="even"), r"rounding must be one of half_up, half_even, not 'even'"),
])
def test_verify_names_the_node(change, message):
    g = bias_add_graph()
    bad = g.replace(nodes=(dataclasses.replace(g.nodes[0], **change),))
    with pytest.raises(VerifyError, match=r"node 'ba' \(BiasAdd\): " + message):
        from qfab.compiler.verify import verify
        verify(bad)


def test_qfab_file_keeps_the_node(tmp_path):
    g = bias_add_graph(rounding="half_even")
    modelfile.save(g, tmp_path / "m.qfab")
    back = modelfile.load(tmp_path / "m.qfab")
    a, b = g.nodes[0], back.nodes[0]
    assert (b.kind, b.m_a, b.shift, b.lo, b.hi, b.rounding) == (a.kind, a.m_a, a.shift, a.lo, a.hi, a.rounding)
    np.testing.assert_array_equal(a.bias, b.bias)


def test_qdq_form_round_trips_wide_biases_and_refuses_what_it_cannot_carry(tmp_path):
    """A bias wider than int32 with trailing zeros is written as ``bias / 2**k`` at
    ``s_y / 2**(shift - k)`` and read back the same; a bias that needs more than 32 bits, or a
    multiplier that is not the dyadic form of ``s_x / s_y``, is refused with the node's name."""
    x = Tensor("x", (6,), qtype(8, False, 100, 0.1))
    y = Tensor("y", (6,), qtype(8, False, 10, 0.2))
    # s_x / s_y = 0.5: m_a = 2**23, shift 24
    node = BiasAdd("ba", "x", "y", m_a=1 << 23, shift=24, bias=np.array([3 << 40, -5 << 38, 0, 1 << 24, 7 << 12, -7 << 12]),
                   lo=0, hi=255)
    wide = graph(["x"], [node], [x, y])
    save_qdq(wide, tmp_path / "wide.onnx")
    back = load_graph(tmp_path / "wide.onnx")
    np.testing.assert_array_equal(back.nodes[0].bias, wide.nodes[0].bias)
    assert (back.nodes[0].m_a, back.nodes[0].shift) == (1 << 23, 24)
    codes = np.random.default_rng(0).integers(0, 256, (50, 6))
    np.testing.assert_array_equal(reference.run(back, codes)[back.outputs[0]], reference.run(wide, codes)["y"])
    with pytest.raises(QfabError, match=r"node 'ba': bias does not fit int32"):
        save_qdq(graph(["x"], [dataclasses.replace(node, bias=node.bias + 1)], [x, y]), tmp_path / "odd.onnx")
    with pytest.raises(QfabError, match=r"node 'ba': m_a / 2\*\*shift is not the dyadic form of s_x / s_y"):
        save_qdq(graph(["x"], [dataclasses.replace(node, m_a=3)], [x, y]), tmp_path / "m.onnx")


# ---- import errors ------------------------------------------------------------------------------

def _qdq_add(path, constant_node, inits):
    s = [_init(np.float32(0.05), "s"), _init(np.uint8(128), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]), *constant_node,
             helper.make_node("Add", ["xd", "cd"], ["a"], name="bias_add"),
             helper.make_node("QuantizeLinear", ["a", "s", "z"], ["aq"]),
             helper.make_node("DequantizeLinear", ["aq", "s", "z"], ["y"])]
    return _save(path, nodes, s + inits, MAP, MAP)


def test_a_constant_that_is_not_per_channel_is_refused(tmp_path):
    path = _qdq_add(tmp_path / "m.onnx", [], [_init(np.ones((1, 4, 4), np.float32), "cd")])
    with pytest.raises(UnsupportedModelError, match=r"node 'bias_add' \(Add\): constant of shape \(1, 4, 4\) is not one value, "
                                                    r"nor one per channel of the \(N, 8, 4, 4\) input"):
        load_graph(path)


def test_a_constant_quantized_per_channel_is_refused(tmp_path):
    dq = helper.make_node("DequantizeLinear", ["c", "cs", "cz"], ["cd"], axis=0)
    path = _qdq_add(tmp_path / "m.onnx", [dq], [_init(np.ones((8, 1, 1), np.int8), "c"),
                                                 _init(np.linspace(0.1, 0.2, 8).astype(np.float32), "cs"),
                                                 _init(np.zeros(8, np.int8), "cz")])
    with pytest.raises(UnsupportedModelError, match=r"node 'bias_add' \(Add\): constant 'cd' is quantized per channel"):
        load_graph(path)


@pytest.mark.parametrize("relu_scale", [0.05, 0.07])
def test_a_relu_after_the_sum_is_its_clamp(tmp_path, relu_scale):
    """``Add -> Q(s2) -> DQ -> Relu -> Q(s3)``: the Relu is the BiasAdd's clamp. With ``s3 = s2``
    (what onnxruntime's quantizer writes) nothing is lost; with another ``s3`` the first
    quantization is dropped, and the import says so."""
    s = [_init(np.float32(0.05), "s"), _init(np.float32(relu_scale), "s3"), _init(np.uint8(128), "z"),
         _init(np.uint8(0), "z3"), _init(np.arange(-4, 4, dtype=np.int8).reshape(8, 1, 1), "c"),
         _init(np.float32(0.03), "cs"), _init(np.int8(0), "cz")]
    q3 = ["s", "z"] if relu_scale == 0.05 else ["s3", "z3"]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["c", "cs", "cz"], ["cd"]),
             helper.make_node("Add", ["xd", "cd"], ["a"], name="bias_add"),
             helper.make_node("QuantizeLinear", ["a", "s", "z"], ["aq"]),
             helper.make_node("DequantizeLinear", ["aq", "s", "z"], ["ad"]),
             helper.make_node("Relu", ["ad"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", *q3], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", *q3], ["y"])]
    path = _save(tmp_path / "m.onnx", nodes, s, MAP, MAP)
    notes = []
    g = load_graph(path, notes=notes)
    node = g.nodes[0]
    assert [type(n).__name__ for n in g.nodes] == ["BiasAdd"]
    assert node.lo == g.tensors[node.output].qtype.zero_point                   # the ReLU
    dropped = [n for n in notes if "dropped (one rounding instead of two)" in n]
    assert bool(dropped) == (relu_scale != 0.05), notes
    if relu_scale == 0.05:
        x = np.random.default_rng(0).uniform(-7, 7, (50, *MAP)).astype(np.float32)
        assert (_codes(g, x).reshape(50, -1) == _ort_codes(path, x, g, True).reshape(50, -1)).all()
