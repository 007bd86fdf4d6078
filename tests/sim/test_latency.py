"""The latency estimate (`qfab.compiler.latency`, the manifest's ``latency_estimate``) against the
first-result latency Verilator measures (first input beat to the last output beat of the first
result, no stalls), within 10 %, on builds of every kind: the digits MLP (bit-parallel and
bit-serial) and CNN (sliding windows, max pools), and a small network with a depthwise
convolution (VVAU), a residual block (fork, skip FIFO, Add), an average pool and a global average
pool, at 4 bits on the iCE40 (requantization by binary search, shift and add, thresholds) and at
2 bits bit-serially on the ECP5 (multiply on DSPs, thresholds)."""

from importlib.resources import files

import numpy as np
import pytest

from qfab.compiler import estimate, reference
from qfab.compiler.compile import compile_graph
from qfab.compiler.datasets import digits
from qfab.compiler.folding import choose_folding, stages_of
from qfab.compiler.frontends.onnx_write import float_model, save
from qfab.compiler.load import load_graph
from qfab.compiler.lowering import plan_graph
from qfab.compiler.ptq import QuantConfig
from qfab.sim.accelerator import simulate

pytestmark = [pytest.mark.verilator, pytest.mark.slow]

TOLERANCE = 0.10


def _digits(name, layout, bits):
    x_train, _, x_test, _ = digits(layout)
    graph = load_graph(str(files("qfab.compiler") / "data" / name), x_train,
                       QuantConfig(w_bits=bits, a_bits=bits, calib_method="mse"))
    return graph, reference.quantize_inputs(graph, x_test[:3])


def _mixed(folder, bits, c=4, size=6):
    """2 x size x size input: conv 3x3, depthwise 3x3, pointwise, a residual block (conv 3x3, conv
    1x1), average pool 2x2, global average pool, dense 10; ``c`` channels, random weights."""
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape) * (1.5 / np.sqrt(np.prod(shape[1:])))).astype(np.float32)
    layers = [("conv", w(c, 2, 3, 3), w(c), 1, 1, 1), ("relu",),
              ("conv", w(c, 1, 3, 3), w(c), 1, 1, c), ("relu",),
              ("conv", w(c, c, 1, 1), w(c), 1, 0, 1), ("relu",),
              ("residual", [("conv", w(c, c, 3, 3), w(c), 1, 1, 1), ("relu",), ("conv", w(c, c, 1, 1), w(c), 1, 0, 1)]),
              ("relu",), ("avgpool", 2, 2), ("gap",), ("flatten",), ("gemm", w(10, c), w(10))]
    shape = (2, size, size)
    path = folder / "mixed.onnx"
    save(float_model(layers, shape), path)
    calib = rng.uniform(-0.5, 1.0, (64, *shape)).astype(np.float32)
    graph = load_graph(path, calib, QuantConfig(w_bits=bits, a_bits=bits))
    return graph, reference.quantize_inputs(graph, rng.uniform(-0.5, 1.0, (3, *shape)).astype(np.float32))


# label: (graph and input codes, target II, MAC style, device family)
BUILDS = {
    "mlp_w4a4": (lambda folder: _digits("digits_mlp.onnx", "flat", 4), 256, "bit_parallel", "ice40"),
    "mlp_w4a4_bit_serial": (lambda folder: _digits("digits_mlp.onnx", "flat", 4), 1024, "bit_serial", "ice40"),
    "cnn_w4a4": (lambda folder: _digits("digits_cnn.onnx", "NCHW", 4), 2304, "bit_parallel", "ice40"),
    "mixed_w4a4": (lambda folder: _mixed(folder, 4), 324, "bit_parallel", "ice40"),
    "mixed_w2a2_bit_serial_ecp5": (lambda folder: _mixed(folder, 2), 1296, "bit_serial", "ecp5"),
}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    cache = {}

    def get(label):
        if label not in cache:
            make, ii, style, family = BUILDS[label]
            folder = tmp_path_factory.mktemp(label)
            graph, codes = make(folder)
            cache[label] = graph, codes, ii, style, family, folder
        return cache[label]
    return get


@pytest.mark.parametrize("label", list(BUILDS))
def test_estimate_is_within_ten_percent_of_verilator(made, label):
    graph, codes, ii, style, family, folder = made(label)
    build = compile_graph(graph, folder / "build", target_ii=ii, style=style, family=family, log=lambda *a: None)
    res = simulate(build, codes, log=lambda *a: None)
    estimated, measured = build.manifest.latency_estimate, res.latency
    assert abs(estimated - measured) <= TOLERANCE * measured, (label, estimated, measured)


def test_the_builds_cover_every_engine_requantization_and_style(made):
    """What the builds above exercise, read from their plans (as `compile_graph` makes them)."""
    engines, modes, styles = set(), set(), set()
    for label, (_, ii, style, family) in BUILDS.items():
        graph = made(label)[0]
        stages = stages_of(graph)
        folds = choose_folding(stages, target_ii=ii, cost=estimate.cost_luts, style=style)
        plan = plan_graph(graph, folds, {s.name: s for s in stages}, family=family)
        for s in plan.stages:
            engines.add(s.engine)
            if s.engine == "MVAU":
                modes.add(s.params.get("requant", "multiply"))
            if s.fold is not None and s.engine in ("MVAU", "VVAU"):
                styles.add((s.engine, s.fold.style))
        assert any(e.converter for e in plan.edges) or label != "cnn_w4a4"
    assert engines == {"MVAU", "VVAU", "SlidingWindow", "MaxPool", "AvgPool", "GlobalAvgPool", "Add"}
    assert modes == {"multiply", "shift_add", "thresholds", "search"}
    assert styles == {(e, s) for e in ("MVAU", "VVAU") for s in ("bit_parallel", "bit_serial")}
