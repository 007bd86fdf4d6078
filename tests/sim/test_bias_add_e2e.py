"""BiasAdd in Verilator, bit-exact on every output element: after a convolution (per-channel
constants of a feature map) and after a dense layer (one per element of a vector) at several
foldings, so that each lane's constants are a ROM, a smaller ROM or one constant; and the ONNX
model zoo's mnist-8 quantized by onnxruntime without ``quant_pre_process`` (three bias adds, each
its own rounding), with random stalls, and its first-result latency equal to the estimate."""

import numpy as np
import pytest

from qfab.compiler import reference
from qfab.compiler.buildfolder import Build
from qfab.compiler.compile import compile_graph
from qfab.compiler.folding import Fold
from qfab.compiler.ir import BiasAdd, Dense, Tensor
from qfab.compiler.load import load_graph
from qfab.sim.accelerator import simulate
from tests.compiler.graphs import conv_graph, graph, qtype, requant, weight_type
from tests.compiler.test_zoo import RAW, zoo_quantized

pytestmark = [pytest.mark.verilator, pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _conv_then_bias_add(rng):
    """conv 3x3 (3 -> 4 channels) on 5 x 6, then a BiasAdd with wide per-channel constants, a
    ReLU clamp, rounding half to even."""
    conv = conv_graph(cin=3, cout=4, seed=2)
    y = Tensor("z", conv.tensors["y"].shape, qtype(8, True, -5, 0.3))
    bias = rng.integers(-2048, 2048, 4) << 19         # (11 (y - zy) + k) / 16: one sum in 16 is an exact tie
    node = BiasAdd("bias", "y", "z", m_a=11 << 19, shift=23, bias=bias, lo=-5, hi=127, rounding="half_even")
    return graph(["x"], [conv.nodes[0], node], [*conv.tensors.values(), y])


def _dense_then_bias_add(rng):
    x = Tensor("x", (12,), qtype(4, False, 3, 0.1))
    h = Tensor("h", (8,), qtype(8, True, -5, 0.05))
    y = Tensor("y", (8,), qtype(6, False, 2, 0.2))
    dense = Dense("fc", "x", "h", weights=rng.integers(-8, 8, (1, 8, 12)), multipliers=np.ones((1, 8), np.int64),
                  bias=rng.integers(-200, 200, 8), w_type=weight_type(8, 4), requant=requant(8, h, m0=1 << 20, shift=24))
    node = BiasAdd("bias", "h", "y", m_a=1 << 22, shift=24, bias=rng.integers(-(1 << 28), 1 << 28, 8), lo=2, hi=63)
    return graph(["x"], [dense, node], [x, h, y])


@pytest.mark.parametrize("case, folding", [
    ("map", {"bias": Fold(1, 1)}), ("map", {"bias": Fold(1, 2)}), ("map", {"bias": Fold(1, 4)}),
    ("vector", {"fc": Fold(2, 3), "bias": Fold(1, 2)}),
])
def test_bias_add_simulates_bit_exact(tmp_path, case, folding):
    rng = np.random.default_rng(7)
    g = _conv_then_bias_add(rng) if case == "map" else _dense_then_bias_add(rng)
    tin = g.tensors[g.inputs[0]]
    codes = rng.integers(tin.qtype.qmin, tin.qtype.qmax + 1, (30, *tin.shape))
    want = reference.run(g, codes)[g.outputs[0]]
    assert len(np.unique(want)) >= 8                    # the comparison can fail
    compile_graph(g, tmp_path / "build", folding=folding, log=lambda *a: None)
    res = simulate(Build.load(tmp_path / "build"), codes, stall=0.2, seed=3, log=lambda *a: None)
    got = res.outputs.reshape(want.shape)
    assert np.array_equal(got, want), f"{(got != want).sum()} of {want.size} elements differ"


def test_zoo_mnist_raw_qdq_simulates_bit_exact(tmp_path):
    """The zoo's mnist-8 quantized by onnxruntime in QDQ form without ``quant_pre_process``: its
    three bias adds are BiasAdd stages (folded to 4, 2 and 5 channels a cycle, so with width
    converters around them, at the fastest interval of the first convolution), and the accelerator
    equals qfab's reference (which equals onnxruntime, tests/compiler/test_zoo.py)
    on every output code of 12 digits, with random input gaps and output stalls; without stalls
    the first result comes exactly when the latency estimate says."""
    path, x = zoo_quantized(tmp_path, "QDQ", False)
    g = load_graph(path)
    assert tuple(type(n).__name__ for n in g.nodes) == RAW
    codes = reference.quantize_inputs(g, x[:12])
    want = reference.run(g, codes)[g.outputs[0]]
    folding = {"Plus30": Fold(1, 4), "Plus112": Fold(1, 2), "Plus214": Fold(1, 5)}      # 2, 8 and 2 folds
    build = compile_graph(g, tmp_path / "build", target_ii=19600, folding=folding, log=lambda *a: None)
    assert {s.node: s.simd for s in build.manifest.stages if s.kind == "bias_add"} == \
        {name: f.simd for name, f in folding.items()}
    res = simulate(Build.load(tmp_path / "build"), codes, stall=0.2, seed=3, log=lambda *a: None)
    got = res.outputs.reshape(want.shape)
    assert np.array_equal(got, want), f"{(got != want).sum()} of {want.size} output codes differ"
    calm = simulate(Build.load(tmp_path / "build"), codes[:2], log=lambda *a: None)
    assert calm.latency == build.manifest.latency_estimate
