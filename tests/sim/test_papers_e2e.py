"""The papers' methods on hardware: multipoint weights and trained, pruned networks compile and
simulate bit-exact under random stalls."""

import numpy as np
import pytest

from qfab.compiler import reference
from qfab.compiler.buildfolder import Build
from qfab.compiler.compile import compile_graph
from qfab.compiler.datasets import digits
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import QuantConfig
from qfab.sim.accelerator import simulate

pytestmark = [pytest.mark.verilator, pytest.mark.slow]


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


def _check(graph, x, folder, **kwargs):
    manifest = compile_graph(graph, folder, log=lambda *a: None, **kwargs).manifest
    codes = reference.quantize_inputs(graph, x)
    res = simulate(Build.load(folder), codes, stall=0.2, log=lambda *a: None)
    want = reference.run(graph, codes)[graph.outputs[0]]
    assert np.array_equal(res.outputs.reshape(want.shape), want)
    return manifest, res


def test_multipoint_cnn_simulates_bit_exact(tmp_path):
    x_train, _, x_test, _ = digits("NCHW")
    graph = load_graph(_bundled("digits_cnn.onnx"), x_train,
                       QuantConfig(w_bits=2, a_bits=4, calib_method="mse", multipoint=0.5))
    points = [n.points for n in graph.nodes if hasattr(n, "points")]
    assert max(points) >= 2
    manifest, _ = _check(graph, x_test[:40], tmp_path / "b", target_ii=4608)
    # a P-point layer makes P passes over its weights: V * P * (N / PE) * (K / SIMD) cycles, counted
    # here from the weights' and the output's shapes (not from the folding's own formula)
    nodes = {n.name: n for n in graph.nodes}
    mvaus = [s for s in manifest.stages if s.kind == "mvau"]
    for s in mvaus:
        node = nodes[s.node]
        p, n, *k = node.weights.shape
        vectors = int(np.prod(graph.tensors[node.output].shape[:-1]))
        assert s.cycles == vectors * p * (n // s.pe) * (int(np.prod(k)) // s.simd), s
    assert any(nodes[s.node].points >= 2 and s.cycles == manifest.initiation_interval for s in mvaus)
    # at full rate the hardware runs at exactly that bound: a stage that skipped a pass would be faster,
    # one that needed more would be slower
    res = simulate(Build.load(tmp_path / "b"), reference.quantize_inputs(graph, x_test[:40]), log=lambda *a: None)
    assert not res.built                       # the stalled run's model was reused
    assert res.interval == res.bound == 4608, (res.interval, res.bound)


def test_trained_pruned_mlp_simulates_bit_exact(tmp_path):
    pytest.importorskip("torch", reason="needs the [train] extra: pip install -e '.[train]'")
    from qfab.compiler.train import train_qat
    graph, report = train_qat("mlp", w_bits=4, a_bits=4, sparsity=0.75, epochs=3, seed=0)
    assert report["weight_sparsity"] >= 0.7
    x_test = digits("flat")[2]
    _check(graph, x_test[:40], tmp_path / "b", target_ii=64)
