"""End to end on digits: quantize, compile, simulate in Verilator, and compare every output element
with the bit-exact reference; at full rate and under random input gaps and output stalls.

The digits MLP and CNN (conv, pool, dense), each at w8a8 and w4a4, in both MAC styles.
"""

import numpy as np
import pytest

from qfab.compiler import reference
from qfab.compiler.compile import compile_graph
from qfab.compiler.datasets import digits
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import QuantConfig
from qfab.sim.accelerator import simulate

pytestmark = [pytest.mark.verilator, pytest.mark.slow]

IMAGES = 100
MODELS = {"mlp": ("digits_mlp.onnx", "flat", 256), "cnn": ("digits_cnn.onnx", "NCHW", 2304)}


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    made = {}

    def get(kind, bits, style):
        key = (kind, bits, style)
        if key not in made:
            file, layout, ii = MODELS[kind]
            x_train, _, x_test, _ = digits(layout)
            graph = load_graph(_bundled(file), x_train, QuantConfig(w_bits=bits, a_bits=bits, calib_method="mse"))
            folder = tmp_path_factory.mktemp(f"{kind}_{bits}_{style}")
            build = compile_graph(graph, folder, target_ii=ii if style == "bit_parallel" else ii * bits,
                                  style=style, log=lambda *a: None)
            codes = reference.quantize_inputs(graph, x_test[:IMAGES])
            made[key] = (graph, build, codes)
        return made[key]
    return get


CASES = [(kind, bits, style) for kind in MODELS for bits in (8, 4) for style in ("bit_parallel", "bit_serial")]


@pytest.mark.parametrize("kind,bits,style", CASES)
def test_bit_exact_and_at_the_analytical_rate(builds, kind, bits, style):
    graph, build, codes = builds(kind, bits, style)
    assert any(s.style == style for s in build.manifest.stages if s.kind == "mvau")
    res = simulate(build, codes, log=lambda *a: None)
    want = reference.run(graph, codes)[graph.outputs[0]]
    got = res.outputs.reshape(want.shape)
    assert got.shape == (IMAGES, 10)
    mismatched = int((got != want).sum())
    assert mismatched == 0, f"{mismatched} of {want.size} elements differ"
    assert abs(res.interval - res.bound) <= 0.05 * res.bound, (res.interval, res.bound)


@pytest.mark.parametrize("kind,bits,style", CASES)
def test_bit_exact_under_random_stalls(builds, kind, bits, style):
    graph, build, codes = builds(kind, bits, style)
    res = simulate(build, codes, stall=0.3, seed=bits, log=lambda *a: None)
    want = reference.run(graph, codes)[graph.outputs[0]]
    assert np.array_equal(res.outputs.reshape(want.shape), want)
    assert not res.built                       # the build from the full-rate test was reused
