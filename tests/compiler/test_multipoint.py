"""Multipoint quantization: points found greedily, adaptive per channel, integer multipliers."""

import numpy as np
import pytest

from qfab.base.errors import QfabError
from qfab.compiler import reference
from qfab.compiler.datasets import digits
from qfab.compiler.frontends.onnx_import import import_onnx
from qfab.compiler.multipoint import greedy_point, multipoint_rows
from qfab.compiler.ptq import QuantConfig, quantize


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


def test_greedy_point_is_best_on_its_grid():
    rng = np.random.default_rng(0)
    r = rng.standard_normal((5, 40))
    s, q = greedy_point(r, 3)
    assert q.min() >= -4 and q.max() <= 3
    err = ((r - s[:, None] * q) ** 2).sum(1)
    plain = np.clip(np.rint(r / (np.abs(r).max(1, keepdims=True) / 3)), -4, 3) * (np.abs(r).max(1, keepdims=True) / 3)
    assert np.all(err <= ((r - plain) ** 2).sum(1) + 1e-12)


def test_more_points_reduce_output_error_and_budget_is_respected():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((20, 30))
    x = rng.standard_normal((200, 30))
    errors = []
    for budget in (0.0, 0.1, 0.5, 1.0, 2.0):
        q, m, s = multipoint_rows(w, 2, x, budget, max_points=4)
        approx = s[:, None] * np.einsum("pc,pck->ck", m, q)
        errors.append(float(((x @ (w - approx).T) ** 2).mean()))
        used = int((m != 0).sum())
        assert used == 20 + round(budget * 20)                 # one point each, plus the budget
        assert np.all(q[m == 0] == 0)
        assert q.min() >= -2 and q.max() <= 1
    assert all(b < a for a, b in zip(errors, errors[1:])), errors


def test_extra_points_go_to_the_channels_with_the_largest_output_error():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 16))
    x = rng.standard_normal((100, 16))
    x[:, :4] *= 10                               # inputs 0..3 dominate the output error
    w[3, :4] *= 5                                # channel 3 has large weights on them
    q, m, _ = multipoint_rows(w, 2, x, budget=1 / 8)
    assert m.shape[0] == 2 and np.flatnonzero(m[1]).tolist() == [3]


@pytest.mark.parametrize("name,layout", [("digits_mlp.onnx", "flat"), ("digits_cnn.onnx", "NCHW")])
def test_multipoint_beats_plain_rounding_at_two_bits(name, layout):
    fg = import_onnx(_bundled(name))
    x_train, _, x_test, y_test = digits(layout)
    x_train = x_train.transpose(0, 2, 3, 1) if layout == "NCHW" else x_train
    acc = {}
    for budget in (0.0, 1.0):
        g = quantize(fg, x_train, QuantConfig(w_bits=2, a_bits=8, calib_method="mse", multipoint=budget))
        acc[budget] = float((reference.run_float(g, x_test).argmax(-1) == y_test).mean())
        if budget:
            assert max(n.points for n in g.nodes if hasattr(n, "points")) >= 2
            assert g.metadata["multipoint"] == budget
    assert acc[1.0] > acc[0.0] + 0.01, acc


def test_multipoint_reference_equals_the_sum_of_single_point_layers():
    """The integer semantics: acc = b + sum_p m_p (q_p . x); check on a real multipoint layer."""
    fg = import_onnx(_bundled("digits_mlp.onnx"))
    x_train, _, x_test, _ = digits("flat")
    g = quantize(fg, x_train, QuantConfig(w_bits=3, a_bits=8, multipoint=0.5))
    node = g.nodes[0]
    codes = reference.quantize_inputs(g, x_test).astype(np.int64)
    x = codes - g.tensors[node.input].qtype.zero_point
    acc = node.bias + sum(node.multipliers[p] * (x @ node.weights[p].T) for p in range(node.points))
    want = node.requant.apply(acc, g.tensors[node.output].qtype.zero_point)
    got = reference.run(g, codes, keep_all=True)[node.output]
    assert node.points >= 2 and np.array_equal(got, want)


def test_bad_budget_is_named():
    with pytest.raises(QfabError, match="multipoint budget must be from 0 to 3"):
        QuantConfig(multipoint=5.0)
