"""The verifier: each broken rule raises `VerifyError` naming the node (or tensor) and the rule."""

import dataclasses

import numpy as np
import pytest

from qfab.base.errors import VerifyError
from qfab.compiler.ir import Dense, Graph, QType, Reshape, Tensor, WeightType
from qfab.compiler.verify import verify

from .graphs import (
    add_graph,
    avgpool_graph,
    conv_graph,
    dense_graph,
    every_kind_graphs,
    gap_graph,
    maxpool_graph,
    reshape_graph,
)


def _node(graph, **changes):
    """``graph`` with its single node's fields changed."""
    (node,) = graph.nodes
    return graph.replace(nodes=(dataclasses.replace(node, **changes),))


def _requant(graph, **changes):
    (node,) = graph.nodes
    return _node(graph, requant=dataclasses.replace(node.requant, **changes))


def _tensor(graph, name, shape=None, **qchanges):
    t = graph.tensors[name]
    new = Tensor(name, t.shape if shape is None else shape, dataclasses.replace(t.qtype, **qchanges))
    return graph.replace(tensors={**graph.tensors, name: new})


def _rejects(graph, *phrases):
    with pytest.raises(VerifyError) as info:
        verify(graph)
    message = str(info.value)
    for phrase in phrases:
        assert phrase in message, message
    return message


@pytest.mark.parametrize("label", sorted(every_kind_graphs()))
def test_valid_graphs_pass_and_are_returned(label):
    graph = every_kind_graphs()[label]
    assert verify(graph) is graph


# ---- shapes ----------------------------------------------------------------------------------

def test_dense_input_shape():
    _rejects(_tensor(dense_graph(k=12, name="fc1"), "x", shape=(11,)), "'fc1'", "weights expect (12,)")


def test_dense_output_shape():
    _rejects(_tensor(dense_graph(n=5, name="fc1"), "y", shape=(4,)), "'fc1'", "expected (5,)")


def test_dense_weights_must_be_3d():
    g = dense_graph(name="fc1")
    _rejects(_node(g, weights=g.nodes[0].weights[0]), "'fc1'", "3-D array")


def test_conv_output_shape():
    g = conv_graph(h=5, w=6, name="c1")                        # output (5, 6, 4)
    _rejects(_tensor(g, "y", shape=(5, 5, 4)), "'c1'", "expected (5, 6, 4)")


def test_conv_input_must_be_a_feature_map():
    _rejects(_tensor(conv_graph(name="c1"), "x", shape=(120,)), "'c1'", "must be (H, W, C)")


def test_kernel_larger_than_padded_input():
    g = conv_graph(h=3, w=6, kernel=(3, 3), padding=(0, 1, 0, 1), name="c1")
    _rejects(_tensor(g, "x", shape=(2, 6, 4)), "'c1'", "does not fit the padded input")


@pytest.mark.parametrize("build,name,shape,expected", [
    (maxpool_graph, "pool", (2, 3, 3), "expected (3, 3, 3)"),
    (avgpool_graph, "avg", (2, 2, 3), "expected (2, 2, 2)"),
    (gap_graph, "gap", (1, 2, 5), "expected (1, 1, 5)"),
])
def test_pool_output_shape(build, name, shape, expected):
    _rejects(_tensor(build(name=name), "y", shape=shape), repr(name), expected)


def test_tensor_shape_must_be_positive():
    _rejects(_tensor(dense_graph(), "x", shape=(0,)), "'x'", "dimensions must be positive")
    _rejects(_tensor(dense_graph(), "x", shape=()), "'x'", "dimensions must be positive")


def test_reshape_size_change():
    _rejects(_tensor(reshape_graph(name="flat1"), "y", shape=(13,)), "'flat1'", "cannot reshape",
             "(12 elements)")


def test_reshape_type_change():
    _rejects(_tensor(reshape_graph(name="flat1"), "y", zero_point=0), "'flat1'", "must keep the type")


def test_add_shape_mismatch():
    _rejects(_tensor(add_graph(name="res1"), "b", shape=(2, 3, 5)), "'res1'", "shapes differ")
    _rejects(_tensor(add_graph(name="res1"), "y", shape=(3, 2, 4)), "'res1'", "shapes differ")


# ---- types, clamps, zero points --------------------------------------------------------------

@pytest.mark.parametrize("lo,hi", [(-129, 127), (-128, 128), (5, 4)])
def test_requant_clamp_outside_type(lo, hi):
    _rejects(_requant(dense_graph(name="fc1"), lo=lo, hi=hi), "'fc1'", f"clamp [{lo}, {hi}]",
             "[-128, 127] of i8")


@pytest.mark.parametrize("lo,hi", [(-9, 7), (-8, 8), (3, 2)])
def test_maxpool_clamp_outside_type(lo, hi):
    _rejects(_node(maxpool_graph(name="pool"), lo=lo, hi=hi), "'pool'", f"clamp [{lo}, {hi}]", "of i4")


def test_add_clamp_outside_type():
    _rejects(_node(add_graph(name="res1"), hi=256), "'res1'", "clamp [7, 256]")
    _rejects(_node(add_graph(name="res1"), lo=None), "'res1'", "clamp bounds must be integers")


@pytest.mark.parametrize("zp,rng", [(-1, "[0, 255]"), (256, "[0, 255]")])
def test_zero_point_outside_range(zp, rng):
    _rejects(_tensor(dense_graph(), "x", zero_point=zp), "'x'", f"zero point {zp}", rng)


@pytest.mark.parametrize("bits", [0, 9])
def test_activation_bits(bits):
    _rejects(_tensor(dense_graph(), "x", bits=bits, zero_point=0), "'x'", f"bits must be 1 to 8, not {bits}")


@pytest.mark.parametrize("bits", [0, 33])
def test_wide_output_bits(bits):
    """A graph output no node reads may be up to 32 bits wide (docs/semantics.md, wide output)."""
    _rejects(_tensor(dense_graph(), "y", bits=bits, zero_point=0), "'y'", "bits must be 1 to 32 for a graph output")


def test_activation_scale():
    _rejects(_tensor(dense_graph(), "y", scale=0.0), "'y'", "scale must be a positive finite float")
    _rejects(_tensor(dense_graph(), "y", scale=float("nan")), "'y'", "scale must be a positive finite float")


@pytest.mark.parametrize("bits", [0, 9])
def test_weight_bits(bits):
    g = dense_graph(name="fc1")
    wt = g.nodes[0].w_type
    _rejects(_node(g, w_type=WeightType(bits, True, wt.scales)), "'fc1'", f"weight bits must be 1 to 8, not {bits}")


def test_weights_outside_their_type():
    g = dense_graph(name="fc1")
    w = g.nodes[0].weights.copy()
    w[0, 0, 0] = 128
    _rejects(_node(g, weights=w), "'fc1'", "weights has value 128 above 127")
    w[0, 0, 0] = -129
    _rejects(_node(g, weights=w), "'fc1'", "weights has value -129 below -128")


def test_float_weights():
    g = dense_graph(name="fc1")
    _rejects(_node(g, weights=g.nodes[0].weights.astype(np.float64)), "'fc1'", "weights must be an integer array")


def test_bipolar_weight_zero():
    g = conv_graph(bipolar=True, name="c1")
    w = g.nodes[0].weights.copy()
    w[0, 1, 1, 1, 0] = 0
    _rejects(_node(g, weights=w), "'c1'", "bipolar weights must be -1 or +1, found 0")


def test_bipolar_weight_type_needs_one_bit():
    g = conv_graph(bipolar=True, name="c1")
    wt = g.nodes[0].w_type
    _rejects(_node(g, w_type=WeightType(2, True, wt.scales, bipolar=True)), "'c1'",
             "bipolar weights have 1 bit, not 2")
    _rejects(_node(g, w_type=WeightType(2.0, True, wt.scales)), "'c1'", "weight bits must be 1 to 8, not 2.0")


def test_weight_scales():
    g = dense_graph(n=5, name="fc1")
    _rejects(_node(g, w_type=WeightType(8, True, np.ones(4))), "'fc1'", "weight scales must be 5 positive")
    _rejects(_node(g, w_type=WeightType(8, True, np.array([1.0, 1.0, 0.0, 1.0, 1.0]))), "'fc1'",
             "weight scales")


# ---- requantization and widths ---------------------------------------------------------------

def test_m0_at_two_to_the_m_bits():
    g = dense_graph(name="fc1")
    _rejects(_requant(g, m0=np.full(5, 1 << 24)), "'fc1'", "requant m0 has value 16777216 above 16777215")
    _rejects(_requant(g, m0=np.full(5, -1)), "'fc1'", "requant m0 has value -1 below 0")
    assert verify(_requant(g, m0=np.full(5, (1 << 24) - 1)))


def test_m0_shape_is_per_channel():
    _rejects(_requant(dense_graph(n=5, name="fc1"), m0=np.ones(4, dtype=np.int64)), "'fc1'",
             "requant m0 has shape (4,), expected (5,)")
    _rejects(_requant(avgpool_graph(name="avg"), m0=np.ones(2, dtype=np.int64)), "'avg'", "expected (1,)")


def test_shift_above_62():
    g = dense_graph(name="fc1")
    _rejects(_requant(g, shift=np.full(5, 63)), "'fc1'", "requant shift has value 63 above 62")
    assert verify(_requant(g, shift=np.full(5, 62)))
    _rejects(_node(add_graph(name="res1"), shift=63), "'res1'", "shift must be in 0..62")


def test_add_multipliers():
    _rejects(_node(add_graph(name="res1"), m_a=1 << 24), "'res1'", "m_a must be an integer in [0, 16777216)")
    _rejects(_node(add_graph(name="res1"), m_b=-1), "'res1'", "m_b must be")


def _wide_dense(name, points, mult, bias_value, m_bits):
    """K=4096 u8 x i8 Dense: |acc| <= bias + P * mult * 4096 * 128 * 255."""
    x = Tensor("x", (4096,), QType(8, False, 0.1, 0))
    y = Tensor("y", (2,), QType(8, True, 0.1, 0))
    node = Dense(name, "x", "y", weights=np.zeros((points, 2, 4096), dtype=np.int64),
                 multipliers=np.full((points, 2), mult, dtype=np.int64),
                 bias=np.full(2, bias_value, dtype=np.int64), w_type=WeightType(8, True, np.ones(2)),
                 requant=dataclasses.replace(dense_graph().nodes[0].requant, m0=np.ones(2, dtype=np.int64),
                                             shift=np.zeros(2, dtype=np.int64)))
    return Graph({"x": x, "y": y}, (node,), ("x",), ("y",), m_bits=m_bits)


def test_accumulator_too_wide():
    # bound = 3 * 32767 * 4096 * 128 * 255 ~ 2^43.6 -> 45 bits; with m_bits = 17 that is 62 bits
    assert verify(_wide_dense("big", 3, 32767, 0, 17))
    _rejects(_wide_dense("big", 3, 32767, 0, 18), "'big'", "needs 63 bits, more than 62")
    _rejects(_wide_dense("big", 3, 32767, 0, 24), "'big'", "accumulator times multiplier")


def test_pool_accumulator_too_wide():
    g = gap_graph(name="gap")
    q = g.tensors["x"].qtype                                  # i8, zero point -3: |x - zx| <= 130
    ok = g.replace(tensors={**g.tensors, "x": Tensor("x", (1024, 1024, 5), q)}, m_bits=32)
    assert verify(ok)                                         # 2^20 * 130 -> 29 bits, + 32 = 61
    wide = g.replace(tensors={**g.tensors, "x": Tensor("x", (2048, 2048, 5), q)}, m_bits=32)
    _rejects(wide, "'gap'", "needs 63 bits")                  # 2^22 * 130 -> 31 bits


@pytest.mark.parametrize("m_bits", [1, 33, 24.0])
def test_graph_m_bits(m_bits):
    _rejects(dense_graph().replace(m_bits=m_bits), f"m_bits must be an integer from 2 to 32, not {m_bits!r}")


def test_bias_beyond_32_bits():
    g = dense_graph(name="fc1")
    _rejects(_node(g, bias=np.full(5, 2**31)), "'fc1'", "bias has value 2147483648 above 2147483647")
    _rejects(_node(g, bias=np.full(5, -(2**31) - 1)), "'fc1'", "bias has value -2147483649 below")
    assert verify(_node(g, bias=np.full(5, -(2**31))))


def test_point_multipliers_beyond_16_bits():
    g = dense_graph(points=2, name="fc1")
    _rejects(_node(g, multipliers=np.full((2, 5), 2**15)), "'fc1'", "point multipliers has value 32768 above 32767")
    _rejects(_node(g, multipliers=np.ones((1, 5), dtype=np.int64)), "'fc1'", "point multipliers has shape (1, 5)")


def test_weights_need_a_point():
    g = dense_graph(name="fc1")
    _rejects(_node(g, weights=np.zeros((0, 5, 12), dtype=np.int64)), "'fc1'", "at least one point")


# ---- windows and groups ----------------------------------------------------------------------

@pytest.mark.parametrize("groups", [3, 5, 0])
def test_groups_that_do_not_divide(groups):
    g = conv_graph(cin=4, cout=4, name="c1")                   # weights (1, 4, 3, 3, 4)
    _rejects(_node(g, groups=groups), "'c1'", f"groups={groups} does not fit input channels 4")


def test_groups_that_divide_but_do_not_match_the_weights():
    g = conv_graph(cin=4, cout=4, name="c1")
    _rejects(_node(g, groups=2), "'c1'", "groups=2")


@pytest.mark.parametrize("padding", [(3, 0, 0, 0), (0, 3, 0, 0), (0, 0, 3, 0), (0, 0, 0, 3)])
def test_padding_not_smaller_than_kernel(padding):
    _rejects(_node(conv_graph(name="c1"), padding=padding), "'c1'", f"padding {padding}",
             "smaller than the kernel (3, 3)")


def test_pool_padding_not_smaller_than_kernel():
    _rejects(_node(maxpool_graph(name="pool"), padding=(2, 0, 0, 0)), "'pool'", "smaller than the kernel")
    _rejects(_node(avgpool_graph(name="avg"), padding=(0, 0, 0, 3)), "'avg'", "smaller than the kernel")


def test_window_arity_and_sign():
    _rejects(_node(maxpool_graph(name="pool"), stride=(2,)), "'pool'", "kernel and stride need 2 values")
    _rejects(_node(maxpool_graph(name="pool"), stride=(0, 2)), "'pool'", "must be positive")
    _rejects(_node(conv_graph(name="c1"), padding=(1, 1, 1)), "'c1'", "padding 4")


def test_maxpool_type_change():
    g = maxpool_graph(name="pool")
    _rejects(_tensor(g, "y", scale=0.1), "'pool'", "MaxPool output type must equal its input type")
    _rejects(_tensor(g, "y", zero_point=0), "'pool'", "MaxPool output type")


# ---- graph structure -------------------------------------------------------------------------

def _two_dense():
    g = dense_graph(name="fc1")
    second = dataclasses.replace(g.nodes[0], name="fc2", input="x", output="z")
    return g, second


def test_duplicate_node_names():
    g, second = _two_dense()
    g = g.replace(nodes=(g.nodes[0], dataclasses.replace(second, name="fc1")),
                  tensors={**g.tensors, "z": g.tensors["y"].__class__("z", (5,), g.tensors["y"].qtype)},
                  outputs=("z",))
    _rejects(g, "'fc1'", "node name used twice")


def test_node_reading_a_tensor_nobody_produced():
    g = reshape_graph(name="flat1")
    t = Tensor("w", (12,), g.tensors["y"].qtype)
    late = Reshape("late", "w", "v")
    g = g.replace(nodes=(late, *g.nodes), tensors={**g.tensors, "w": t, "v": Tensor("v", (12,), t.qtype)})
    _rejects(g, "'late'", "input 'w' is not produced by an earlier node")


def test_nodes_out_of_order():
    g = reshape_graph(name="flat1")
    t = g.tensors["y"]
    after = Reshape("after", "y", "z")
    g = g.replace(nodes=(after, *g.nodes), tensors={**g.tensors, "z": Tensor("z", (12,), t.qtype)},
                  outputs=("z",))
    _rejects(g, "'after'", "input 'y' is not produced")


def test_output_produced_twice():
    g = reshape_graph(name="flat1")
    again = Reshape("again", "x", "y")
    _rejects(g.replace(nodes=(*g.nodes, again)), "'again'", "output 'y' is produced twice")
    _rejects(g.replace(nodes=(Reshape("over", "y", "x"),), inputs=("x",)), "'over'", "input 'y'")


def test_graph_output_never_produced():
    _rejects(reshape_graph().replace(outputs=("x2",)), "graph output 'x2' is never produced")


def test_undeclared_tensor():
    g = reshape_graph(name="flat1")
    tensors = dict(g.tensors)
    del tensors["y"]
    _rejects(g.replace(tensors=tensors), "tensor 'y' is used but not declared")


def test_tensor_declared_under_another_name():
    g = reshape_graph()
    _rejects(g.replace(tensors={**g.tensors, "y": Tensor("q", (12,), g.tensors["y"].qtype)}),
             "tensor 'y' is declared under the name 'q'")


def test_graph_needs_inputs_and_outputs():
    _rejects(reshape_graph().replace(inputs=()), "at least one input and one output")
    _rejects(reshape_graph().replace(outputs=()), "at least one input and one output")


def test_not_a_graph():
    _rejects("graph", "expected a Graph, not str")
