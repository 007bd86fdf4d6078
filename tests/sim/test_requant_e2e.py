"""w8a8 digits MLP and CNN folded for the iCEBreaker (8 DSPs): the compiler requantizes without
DSPs where the fold leaves the cycles (docs/hardware.md, "Requantization options"; a layer goes
on the DSPs, the product in registered SB_MAC16 pieces, only when the logic would not fit:
`compile.spend_dsps`); each build fits the board's budget, and Verilator runs it bit-exact, at
full rate and under random stalls."""

import pytest

from qfab.boards.registry import budget_for
from qfab.compiler import reference
from qfab.compiler.compile import compile_graph
from qfab.compiler.datasets import digits
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import QuantConfig
from qfab.sim.accelerator import simulate

pytestmark = [pytest.mark.verilator, pytest.mark.slow]

IMAGES = 40
MODELS = {"mlp": ("digits_mlp.onnx", "flat"), "cnn": ("digits_cnn.onnx", "NCHW")}


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    made = {}

    def get(kind):
        if kind not in made:
            file, layout = MODELS[kind]
            x_train, _, x_test, _ = digits(layout)
            graph = load_graph(_bundled(file), x_train, QuantConfig(w_bits=8, a_bits=8, calib_method="mse"))
            folder = tmp_path_factory.mktemp(f"{kind}_icebreaker")
            build = compile_graph(graph, folder, budget=budget_for("icebreaker"), log=lambda *a: None)
            made[kind] = (graph, build, reference.quantize_inputs(graph, x_test[:IMAGES]))
        return made[kind]
    return get


@pytest.mark.parametrize("kind", list(MODELS))
def test_fits_the_icebreaker(builds, kind):
    graph, build, _ = builds(kind)
    budget = budget_for("icebreaker")
    fits, why = budget.check(_resources(build.manifest.estimates.total))
    assert fits, why
    assert build.manifest.estimates.total.dsps <= budget.dsps
    verilog = (build.folder / build.manifest.files.verilog).read_text()
    assert "mul_low_" in verilog                  # shift-and-add requantization (hw/requant.py)
    modes = {s.name: s.requant for s in build.manifest.stages if s.kind == "mvau"}
    if kind == "cnn":          # above 95 % of the cells all in logic: a layer on the idle DSPs
        assert "multiply" in modes.values() and set(modes.values()) != {"multiply"}
        assert 0 < build.manifest.estimates.total.dsps <= 8
        assert "dsp_keep" in verilog              # the product in registered SB_MAC16 pieces
    else:
        assert set(modes.values()) == {"shift_add"} and build.manifest.estimates.total.dsps == 0


def _resources(total):
    from qfab.compiler.estimate import Resources
    d = total.as_dict()
    return Resources(d["luts"], d["ffs"], d["dsps"], d["bram_bits"], d["bram_blocks"])


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_bit_exact(builds, kind, stall):
    graph, build, codes = builds(kind)
    res = simulate(build, codes, stall=stall, seed=3, log=lambda *a: None)
    want = reference.run(graph, codes)[graph.outputs[0]]
    got = res.outputs.reshape(want.shape)
    mismatched = int((got != want).sum())
    assert mismatched == 0, f"{mismatched} of {want.size} elements differ"
    if not stall:
        assert abs(res.interval - res.bound) <= 0.05 * res.bound, (res.interval, res.bound)
