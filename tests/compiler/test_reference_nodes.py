"""The numpy reference against a slow loop-per-output implementation, every element, every kind."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

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
