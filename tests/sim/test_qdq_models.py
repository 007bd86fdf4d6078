"""Quantized models from other tools, compiled and simulated in Verilator bit-exact on every output
element: pools that round half to even (as imported from QDQ/QOperator models) and a Brevitas
QCDQ network with 4-bit widths, a half-to-even average pool and a float last layer (its output
is the wide integer accumulator)."""

import numpy as np
import pytest

from qfab.compiler import reference
from qfab.compiler.buildfolder import Build
from qfab.compiler.compile import compile_graph
from qfab.compiler.ir import AvgPool, GlobalAvgPool, Tensor
from qfab.compiler.load import load_graph
from qfab.sim.accelerator import simulate
from tests.compiler.brevitas_models import available, export_qcdq, inputs
from tests.compiler.graphs import graph, qtype, requant

pytestmark = [pytest.mark.verilator, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _tie_pools():
    """An AvgPool (2 x 2, M0 / 2**n = 1/4: every sum = 2 mod 4 is an exact tie) then a
    GlobalAvgPool (over 2 x 2, 1/4 again), both rounding half to even."""
    x = Tensor("x", (4, 4, 4), qtype(4, True, 0, 0.5))
    h = Tensor("h", (2, 2, 4), qtype(4, True, 1, 0.5))
    y = Tensor("y", (1, 1, 4), qtype(4, True, -1, 0.5))
    pool = AvgPool("pool", "x", "h", (2, 2), (2, 2), requant(1, h, m0=1, shift=2), rounding="half_even")
    gap = GlobalAvgPool("gap", "h", "y", requant(1, y, m0=1 << 20, shift=22), rounding="half_even")
    return graph(["x"], [pool, gap], [x, h, y])


def _simulate(g, codes, tmp_path):
    compile_graph(g, tmp_path / "build", log=lambda *a: None)
    res = simulate(Build.load(tmp_path / "build"), codes, stall=0.2, seed=3, log=lambda *a: None)
    return res.outputs


def _half_up(g):
    from qfab.compiler.ops import op_for
    return g.replace(nodes=tuple(op_for(n).with_rounding(n, "half_up") if hasattr(n, "rounding") else n
                                 for n in g.nodes))


def test_half_even_pools_simulate_bit_exact(tmp_path):
    g = _tie_pools()
    rng = np.random.default_rng(5)
    codes = rng.integers(-8, 8, (60, 4, 4, 4))
    want = reference.run(g, codes)[g.outputs[0]]
    assert not np.array_equal(reference.run(_half_up(g), codes)[g.outputs[0]], want)   # ties decide
    got = _simulate(g, codes, tmp_path).reshape(want.shape)
    assert np.array_equal(got, want), f"{(got != want).sum()} of {want.size} elements differ"


@pytest.mark.slow
def test_brevitas_float_output_network_simulates_bit_exact(tmp_path):
    # part of the [train] extra the README's test command installs: missing is a failure, not a skip
    assert available(), "brevitas and onnxoptimizer are missing: pip install -e '.[dev,train]'"
    path = export_qcdq(tmp_path / "b.onnx", scales="fixed", pool="avg", output="float", depthwise=False)
    g = load_graph(path)
    out = g.tensors[g.outputs[0]].qtype
    assert out.bits > 8 and [n.rounding for n in g.nodes if n.kind == "AvgPool"] == ["half_even"]
    assert {n.w_type.describe() for n in g.nodes if hasattr(n, "w_type")} == {"i4"}
    codes = reference.quantize_inputs(g, inputs(24))
    want = reference.run(g, codes)[g.outputs[0]]
    assert not np.array_equal(reference.run(_half_up(g), codes)[g.outputs[0]], want)
    got = _simulate(g, codes, tmp_path).reshape(want.shape)
    assert np.array_equal(got, want), f"{(got != want).sum()} of {want.size} elements differ"


@pytest.mark.slow
def test_power_of_two_brevitas_network_rounds_half_even_in_hardware(tmp_path):
    """Brevitas fixed-point weights and activations (every requantization a power of two, ties
    everywhere): the convolution's MVAU, the depthwise VVAU, the pool and the dense MVAU all round
    half to even in Verilator, equal to the reference (which equals onnxruntime:
    tests/compiler/test_qdq_widths.py) on every element; half up would differ."""
    assert available(), "brevitas and onnxoptimizer are missing: pip install -e '.[dev,train]'"
    path = export_qcdq(tmp_path / "b.onnx", scales="fixed", pool="avg", output="int8", weights="fixed")
    g = load_graph(path)
    assert {n.kind for n in g.nodes} >= {"Conv2d", "DepthwiseConv2d", "AvgPool", "Dense"}
    codes = reference.quantize_inputs(g, inputs(24))
    want = reference.run(g, codes)[g.outputs[0]]
    assert not np.array_equal(reference.run(_half_up(g), codes)[g.outputs[0]], want)
    got = _simulate(g, codes, tmp_path).reshape(want.shape)
    assert np.array_equal(got, want), f"{(got != want).sum()} of {want.size} elements differ"
    verilog = "".join(p.read_text() for p in (tmp_path / "build").rglob("*.v"))
    assert verilog.count("tie_0") >= 3            # the tie detectors of the three MAC engines' requantizations


@pytest.mark.slow
def test_32_bit_accumulator_output_simulates_bit_exact(tmp_path):
    """onnxruntime's QDQ digits MLP (per-channel weights) without its output quantization: the
    output is a 32-bit wide type (the accumulator requantized to a fine common step)."""
    from qfab.compiler.datasets import digits
    from tests.compiler.ort_models import ort_quantize
    from tests.compiler.test_onnx_ort import _bundled
    from tests.compiler.test_qdq_widths import _strip_output_quantization
    x_train, _, x_test, _ = digits("flat")
    q = ort_quantize(_bundled("mlp"), tmp_path / "q.onnx", x_train[:256], "QDQ", "uint8", True)
    g = load_graph(_strip_output_quantization(q, tmp_path / "f.onnx"))
    assert g.tensors[g.outputs[0]].qtype.bits == 32
    codes = reference.quantize_inputs(g, x_test[:40])
    want = reference.run(g, codes)[g.outputs[0]]
    assert np.abs(want).max() > 1 << 24
    got = _simulate(g, codes, tmp_path).reshape(want.shape)
    assert np.array_equal(got, want), f"{(got != want).sum()} of {want.size} elements differ"
