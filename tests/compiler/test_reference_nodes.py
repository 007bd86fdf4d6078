"""The numpy reference against a slow loop-per-output implementation, every element, every kind."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qfab.base.errors import QfabError
from qfab.compiler import reference
from qfab.compiler.ir import Conv2d, Dense, GlobalAvgPool, Graph, QType, Requant, Tensor, WeightType
from qfab.compiler.verify import verify

from . import slow_reference
from .graphs import DRAWN_NODES, chain_st, graph_st, random_codes

SETTINGS = settings(max_examples=60, deadline=None)


def _compare(graph, seed, batch=4):
    codes = random_codes(graph, batch, seed)
    want = slow_reference.run(graph, codes)
    got = reference.run(graph, codes, keep_all=True)
    assert set(graph.outputs) <= set(got)
    for name, value in got.items():
        assert value.dtype == np.int64, name
        assert value.shape == want[name].shape, name
        bad = np.argwhere(value != want[name])
        assert bad.size == 0, (f"{name}: {len(bad)} elements differ, first at {tuple(bad[0])}: "
                               f"reference {value[tuple(bad[0])]}, slow {want[name][tuple(bad[0])]}")
        q = graph.tensors[name].qtype
        assert value.min() >= q.qmin and value.max() <= q.qmax, name
    return got


@pytest.mark.parametrize("kind", sorted(DRAWN_NODES))
def test_single_node_matches_slow_reference(kind):
    @SETTINGS
    @given(graph=graph_st(kind), seed=st.integers(0, 2**32 - 1))
    def check(graph, seed):
        _compare(graph, seed)
    check()


@SETTINGS
@given(graph=chain_st(), seed=st.integers(0, 2**32 - 1))
def test_chains_match_slow_reference(graph, seed):
    _compare(graph, seed)


@pytest.mark.parametrize("kind", ["Dense", "Conv2d", "AvgPool", "GlobalAvgPool", "Add"])
def test_random_graphs_are_not_degenerate(kind):
    """Enough drawn graphs have outputs that take several values (not all clamped or constant),
    so that the comparisons above can fail. Derandomized: a measurement of the strategies."""
    distinct = []

    @settings(max_examples=40, deadline=None, database=None, derandomize=True)
    @given(graph=graph_st(kind), seed=st.integers(0, 2**32 - 1))
    def collect(graph, seed):
        got = reference.run(graph, random_codes(graph, 8, seed))[graph.outputs[0]]
        distinct.append(len(np.unique(got)))
    collect()
    assert np.mean(np.array(distinct) >= 3) >= 0.3, distinct


# ---- extremes, against a pure-int numpy computation -------------------------------------------

def _int_requant(acc, m0, shift, zp, lo, hi):
    """Python-int requantization of an int64 array (object arithmetic, exact)."""
    prod = acc.astype(object) * np.asarray(m0, dtype=np.int64).astype(object)
    n = np.broadcast_to(np.asarray(shift, dtype=np.int64), prod.shape)
    out = np.empty(prod.shape, dtype=np.int64)
    for idx in np.ndindex(prod.shape):
        out[idx] = min(max(zp + slow_reference.round_shift(prod[idx], int(n[idx])), lo), hi)
    return out


@pytest.mark.parametrize("signed_x", [False, True])
def test_dense_exact_at_max_fan_in_and_widths(signed_x):
    k, n, points = 4096, 6, 3
    zx = 255 if not signed_x else 127                       # x - zx reaches -255
    tin = Tensor("x", (k,), QType(8, signed_x, 0.1, zx))
    tout = Tensor("y", (n,), QType(8, True, 0.1, 0))
    wt = WeightType(bits=8, signed=True, scales=np.full(n, 0.01))
    rng = np.random.default_rng(1)
    weights = rng.integers(-128, 128, size=(points, n, k), dtype=np.int64)
    weights[:, 0] = -128                                    # channel 0: every product is +32640
    weights[:, 1] = 127
    mult = np.array([[32767] * n, [32767, 32767] + [-32768] * (n - 2), [32767] * n], dtype=np.int64)
    bias = np.array([2**31 - 1, -2**31, 0, 5, -5, 123456789], dtype=np.int64)
    m_bits = 16
    m0 = np.array([2**16 - 1, 2**16 - 1, 1, 40000, 12345, 65535], dtype=np.int64)
    shift = np.array([50, 50, 0, 40, 44, 62], dtype=np.int64)
    node = Dense("big", "x", "y", weights=weights, multipliers=mult, bias=bias, w_type=wt,
                 requant=Requant(m0=m0, shift=shift, lo=-128, hi=127))
    graph = verify(Graph(tensors={"x": tin, "y": tout}, nodes=(node,), inputs=("x",), outputs=("y",),
                         m_bits=m_bits))
    qmin, qmax = tin.qtype.qmin, tin.qtype.qmax
    x = rng.integers(qmin, qmax + 1, size=(6, k), dtype=np.int64)
    x[0], x[1] = qmin, qmax
    got = reference.run(graph, x)["y"]
    xs = x - zx
    acc = bias + sum(mult[p] * (xs @ weights[p].T) for p in range(points))   # int64, exact here
    assert np.abs(acc).max() > 2**42                        # the test reaches the widths it claims
    want = _int_requant(acc, m0, shift, 0, -128, 127)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) > 3


def test_grouped_conv_exact_with_extreme_codes():
    h = w = 7
    cin, cout, groups = 6, 6, 3
    tin = Tensor("x", (h, w, cin), QType(8, False, 0.1, 0))
    tout = Tensor("y", (4, 4, cout), QType(8, False, 0.1, 128))
    wt = WeightType(bits=8, signed=True, scales=np.full(cout, 0.01))
    rng = np.random.default_rng(2)
    weights = rng.choice(np.array([-128, 127]), size=(2, cout, 3, 3, cin // groups)).astype(np.int64)
    node = Conv2d("c", "x", "y", weights=weights, multipliers=np.full((2, cout), 32767, dtype=np.int64),
                  bias=np.full(cout, -(2**31), dtype=np.int64), w_type=wt,
                  requant=Requant(m0=np.full(cout, 2**24 - 1), shift=np.full(cout, 55), lo=0, hi=255),
                  stride=(2, 2), padding=(1, 1, 1, 1), groups=groups)
    graph = verify(Graph(tensors={"x": tin, "y": tout}, nodes=(node,), inputs=("x",), outputs=("y",)))
    x = rng.choice(np.array([0, 255]), size=(3, h, w, cin)).astype(np.int64)
    got = reference.run(graph, x)["y"]
    want = slow_reference.run(graph, {"x": x})["y"]
    np.testing.assert_array_equal(got, want)


def test_global_avgpool_exact_on_large_plane():
    tin = Tensor("x", (64, 64, 2), QType(8, True, 0.1, 127))
    tout = Tensor("y", (1, 1, 2), QType(8, True, 0.1, 0))
    graph_nodes = (GlobalAvgPool("gap", "x", "y", Requant(m0=np.array([2**24 - 1]), shift=np.array([40]),
                                                         lo=-128, hi=127)),)
    graph = verify(Graph(tensors={"x": tin, "y": tout}, nodes=graph_nodes, inputs=("x",), outputs=("y",)))
    x = np.full((2, 64, 64, 2), -128, dtype=np.int64)
    x[1, :, :, 1] = 127
    x[1, 0, 0, 1] = 126
    got = reference.run(graph, x)["y"]
    acc = (x - 127).sum(axis=(1, 2), keepdims=True)
    np.testing.assert_array_equal(got, _int_requant(acc, 2**24 - 1, 40, 0, -128, 127))


# ---- the batch runner around the kernels: chunks, inputs, layouts, (de)quantization ----------

def test_batches_longer_than_a_chunk_are_exact_in_every_item():
    """Items at both sides of every chunk boundary (CHUNK) come out in order and exact."""
    from .graphs import dense_graph
    graph = dense_graph(k=12, n=5)
    batch = 2 * reference.CHUNK + 3
    codes = random_codes(graph, batch, seed=5)
    got = reference.run(graph, codes["x"])
    want = slow_reference.run(graph, codes)
    assert got["y"].shape == (batch, 5) and np.array_equal(got["y"], want["y"])
    assert len({tuple(row) for row in got["y"].tolist()}) > batch // 2        # the items differ
    assert list(got) == ["y"] and set(reference.run(graph, codes, keep_all=True)) == {"x", "y"}


def test_two_input_graph_takes_a_dict_by_name():
    from .graphs import add_graph
    graph = add_graph()
    codes = random_codes(graph, 5, seed=2)
    assert np.array_equal(reference.run(graph, codes)["y"], slow_reference.run(graph, codes)["y"])
    with pytest.raises(QfabError, match=r"^the model has 2 inputs: pass a dict by name$"):
        reference.run(graph, codes["a"])


def test_bad_codes_are_named():
    from .graphs import dense_graph
    graph = dense_graph(k=12, n=5)
    q = graph.tensors["x"].qtype
    with pytest.raises(QfabError, match=r"^input 'x' must hold integer codes, not float64$"):
        reference.run(graph, np.zeros((2, 12)))
    with pytest.raises(QfabError, match=r"^input 'x' has shape \(11,\) per item, the model expects \(12,\)$"):
        reference.run(graph, np.zeros((2, 11), np.int64))
    for bad in (q.qmin - 1, q.qmax + 1):
        x = np.full((2, 12), q.qmin, np.int64)
        x[1, 3] = bad
        with pytest.raises(QfabError, match=rf"^input 'x' has codes outside \[{q.qmin}, {q.qmax}\] of "):
            reference.run(graph, x)
    for edge in (q.qmin, q.qmax):                      # the ends of the range are codes
        assert reference.run(graph, np.full((1, 12), edge, np.int64))["y"].shape == (1, 5)
    assert reference.run(graph, np.zeros((0, 12), np.int64))["y"].shape == (0, 5)
    assert reference.run(graph, np.zeros((2, 12), np.int16))["y"].dtype == np.int64


def test_float_inputs_are_quantized_as_the_input_type_in_the_model_layout():
    """NCHW images go to channels-last; codes are round(x / scale) + zero point, saturated; the
    outputs come back to NCHW and to floats as (code - zero point) * scale."""
    from qfab.compiler.ir import Layout

    from .graphs import conv_graph
    graph = conv_graph(h=5, w=6, cin=4, cout=3).replace(input_layout=Layout.NCHW)
    q = graph.tensors["x"].qtype
    rng = np.random.default_rng(4)
    codes_hwc = rng.integers(q.qmin, q.qmax + 1, size=(3, 5, 6, 4))
    x_nchw = ((codes_hwc - q.zero_point) * q.scale).transpose(0, 3, 1, 2).astype(np.float32)
    codes = reference.quantize_inputs(graph, x_nchw)
    assert codes.dtype == np.int64 and np.array_equal(codes, codes_hwc)
    assert np.array_equal(reference.output_codes(graph, codes), codes_hwc.transpose(0, 3, 1, 2))
    with pytest.raises(QfabError, match=r"input has shape \(6, 5, 4\) per item \(after layout conversion\), "
                                        r"the model expects \(5, 6, 4\) channels-last"):
        reference.quantize_inputs(graph, x_nchw.transpose(0, 1, 3, 2))      # H and W swapped
    y = reference.run(graph, codes)[graph.outputs[0]]
    out = graph.tensors[graph.outputs[0]].qtype
    floats = reference.dequantize_outputs(graph, y)
    assert floats.shape == (3, 3, y.shape[1], y.shape[2])          # NCHW again
    np.testing.assert_array_equal(floats, ((y - out.zero_point) * out.scale).transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(reference.run_float(graph, x_nchw), floats)
    # a flat model keeps its layout; a name picks the output
    from .graphs import dense_graph
    flat = dense_graph(k=12, n=5)
    yq = reference.run(flat, random_codes(flat, 4)["x"])["y"]
    qy = flat.tensors["y"].qtype
    np.testing.assert_array_equal(reference.dequantize_outputs(flat, yq, "y"), (yq - qy.zero_point) * qy.scale)
    assert np.array_equal(reference.output_codes(flat, yq), yq)
    xq, qx = random_codes(flat, 4)["x"], flat.tensors["x"].qtype
    assert (qx.scale, qx.zero_point) != (qy.scale, qy.zero_point)
    np.testing.assert_array_equal(reference.dequantize_outputs(flat, xq, "x"), (xq - qx.zero_point) * qx.scale)
    # a channels-last model takes and gives images as they are
    hwc = conv_graph(h=5, w=6, cin=4, cout=3)
    assert hwc.input_layout is not Layout.NCHW
    codes = reference.quantize_inputs(hwc, x_nchw.transpose(0, 2, 3, 1))
    assert np.array_equal(codes, codes_hwc)
    y = reference.run(hwc, codes)[hwc.outputs[0]]
    assert np.array_equal(reference.output_codes(hwc, y), y)
