"""Differential fuzzing: random small networks (layer kinds, shapes, bits, folding, MAC style),
compiled and simulated in Verilator under random stalls, equal to the reference element for element.

Four seeds run by default; set QFAB_FUZZ_SEEDS=N to run N.
"""

import os

import numpy as np
import pytest

from qfab.compiler import reference
from qfab.compiler.buildfolder import Build
from qfab.compiler.compile import compile_graph
from qfab.compiler.folding import stages_of
from qfab.compiler.frontends.onnx_write import float_model, save
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import LayerConfig, QuantConfig
from qfab.sim.accelerator import simulate

pytestmark = [pytest.mark.verilator, pytest.mark.slow]

SEEDS = range(int(os.environ.get("QFAB_FUZZ_SEEDS", "4")))


def random_model(rng):
    """A random float network as layer specs, with its input shape."""
    def w(*shape):
        return (rng.standard_normal(shape) * (1.5 / np.sqrt(np.prod(shape[1:])))).astype(np.float32)
    kind = rng.choice(["mlp", "cnn", "residual"])
    if kind == "mlp":
        sizes = [int(rng.choice([4, 6, 8, 12, 16]))]
        layers = []
        for _ in range(int(rng.integers(1, 4))):
            sizes.append(int(rng.choice([2, 3, 4, 6, 8, 10])))
            layers += [("gemm", w(sizes[-1], sizes[-2]), w(sizes[-1])), ("relu",)]
        return layers[:-1] if rng.random() < 0.5 else layers, (sizes[0],)
    c, h = int(rng.choice([1, 2, 3])), int(rng.choice([4, 5, 6]))
    layers, cur_c, cur_h = [], c, h
    for _ in range(int(rng.integers(1, 3))):
        k = int(rng.choice([1, 2, 3]))
        pad = int(rng.integers(0, k)) if k > 1 else 0
        stride = int(rng.choice([1, 1, 2])) if cur_h + 2 * pad - k >= 2 else 1
        out_c = int(rng.choice([2, 3, 4]))
        layers += [("conv", w(out_c, cur_c, k, k), w(out_c), stride, pad, 1), ("relu",)]
        cur_c, cur_h = out_c, (cur_h + 2 * pad - k) // stride + 1
        if cur_h >= 2 and rng.random() < 0.5:
            layers.append((str(rng.choice(["maxpool", "avgpool"])), 2, int(rng.choice([1, 2]))))
            cur_h = (cur_h - 2) // layers[-1][2] + 1
    if kind == "residual":
        layers.append(("residual", [("conv", w(cur_c, cur_c, 3, 3), w(cur_c), 1, 1, 1), ("relu",),
                                    ("conv", w(cur_c, cur_c, 1, 1), w(cur_c), 1, 0, 1)]))
        layers.append(("relu",))
    if rng.random() < 0.5:
        layers += [("gap",), ("flatten",), ("gemm", w(3, cur_c), w(3))]
    else:
        layers += [("flatten",), ("gemm", w(3, cur_c * cur_h * cur_h), w(3))]
    return layers, (c, h, h)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_network_simulates_bit_exact(tmp_path, seed):
    rng = np.random.default_rng(1000 + seed)
    layers, in_shape = random_model(rng)
    path = tmp_path / "m.onnx"
    save(float_model(layers, in_shape), path)
    calib = rng.uniform(-0.5, 1.0, (64, *in_shape)).astype(np.float32)
    base = load_graph(path, calib, QuantConfig())
    per_layer = {n.name: LayerConfig(w_bits=int(rng.integers(1, 9)), a_bits=int(rng.integers(2, 9)))
                 for n in base.nodes if n.kind in ("Dense", "Conv2d")}
    graph = load_graph(path, calib, QuantConfig(layers=per_layer, output_bits=int(rng.integers(4, 9)),
                                                activations=str(rng.choice(["asymmetric", "signed"]))))
    style = str(rng.choice(["bit_parallel", "bit_serial"]))
    folds = {}
    for stage in stages_of(graph):
        options = stage.folds(style if stage.kind == "mvau" else "bit_parallel")
        folds[stage.name] = options[int(rng.integers(len(options)))]
    compile_graph(graph, tmp_path / "build", folding=folds, style=style, log=lambda *a: None)
    x = rng.uniform(-0.5, 1.0, (24, *in_shape)).astype(np.float32)
    codes = reference.quantize_inputs(graph, x)
    want = reference.run(graph, codes)[graph.outputs[0]]
    res = simulate(Build.load(tmp_path / "build"), codes, stall=0.25, seed=seed + 1, log=lambda *a: None)
    got = res.outputs.reshape(want.shape)
    kinds = [n.kind for n in graph.nodes]
    assert np.array_equal(got, want), f"seed {seed}: {kinds} {folds} differs in {(got != want).sum()} elements"
