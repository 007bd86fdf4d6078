"""The digits CNN with its first convolution taking whole windows, one and several output pixels
per beat (a `WideWindow` into copies of a fully unfolded MVAU), compiled and simulated in Verilator:
bit-exact against the reference on every output element, at full rate and under random stalls;
the interval at the analytical bound and the latency estimate within 10 % of the measurement."""

import pytest

from qfab.compiler import reference
from qfab.compiler.compile import compile_graph
from qfab.compiler.datasets import digits
from qfab.compiler.folding import Fold
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import QuantConfig
from qfab.sim.accelerator import simulate

pytestmark = [pytest.mark.verilator, pytest.mark.slow]

IMAGES = 24


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


@pytest.fixture(scope="module")
def cnn():
    x_train, _, x_test, _ = digits("NCHW")
    graph = load_graph(_bundled("digits_cnn.onnx"), x_train, QuantConfig(w_bits=4, a_bits=4))
    return graph, reference.quantize_inputs(graph, x_test[:IMAGES])


def _check_simulation(graph, codes, build, stall):
    """Every output element equal to the reference; without stalls, the interval at the bound and
    the latency estimate within 10 % of the measurement."""
    res = simulate(build, codes, stall=stall, log=lambda *a: None)
    want = reference.run(graph, codes)[graph.outputs[0]]
    got = res.outputs.reshape(want.shape)
    assert int((got != want).sum()) == 0, f"{int((got != want).sum())} of {want.size} elements differ"
    if stall == 0.0:
        assert res.interval <= res.bound * 1.02, (res.interval, res.bound)
        estimate = build.manifest.latency_estimate
        assert abs(estimate - res.latency) <= 0.1 * res.latency, (estimate, res.latency)


@pytest.mark.parametrize("folding,stall", [
    ({"conv_3": Fold(8, 9, "bit_parallel", 4), "maxpool_10": Fold(1, 8), "conv_13": Fold(16, 8),
      "maxpool_20": Fold(1, 16), "gemm_24": Fold(10, 8)}, 0.0),
    ({"conv_3": Fold(8, 9, "bit_parallel", 2), "conv_13": Fold(16, 72, "bit_parallel", 2)}, 0.3),
    ({"conv_3": Fold(2, 9)}, 0.0),
], ids=["pixels4", "pixels2_both_stalls", "whole_windows"])
def test_whole_windows_bit_exact(cnn, tmp_path, folding, stall):
    graph, codes = cnn
    build = compile_graph(graph, tmp_path / "b", folding=folding, log=lambda *a: None)
    engines = {s.name: s for s in build.manifest.stages}
    assert engines["conv_3"].simd == 9
    _check_simulation(graph, codes, build, stall)


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_ecp5_at_ii_64_bit_exact(cnn, tmp_path, stall):
    """Folded for the ECP5 at II 64 as `--board ulx3s_85f` folds it: whole windows, conv_13 at
    SIMD 72 with four register levels in its adder trees (weights read per fold step), every MVAU with its fetch register and
    its skid queue."""
    graph, codes = cnn
    build = compile_graph(graph, tmp_path / "b", target_ii=64, family="ecp5", log=lambda *a: None)
    engines = {s.name: s for s in build.manifest.stages}
    assert engines["conv_13"].simd == 72
    _check_simulation(graph, codes, build, stall)
