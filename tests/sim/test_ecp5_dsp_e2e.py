"""The digits MLP and CNN at w8a8 compiled for the ECP5 as `--board ulx3s_85f` folds them: the
requantization's multiply in MULT18X18D cells with their own registers (`qfab.hw.cells`), which
are cells of the netlist the board synthesizes and, with their simulation models appended, of the
Verilog that Verilator runs here. Bit-exact against the reference on every output element, at
full rate and under random stalls."""

import pytest

from qfab.boards.registry import budget_for, get_board
from qfab.compiler import reference
from qfab.compiler.compile import compile_graph
from qfab.compiler.datasets import digits
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import QuantConfig
from qfab.sim.accelerator import simulate

pytestmark = [pytest.mark.verilator, pytest.mark.slow]

IMAGES = 12


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


@pytest.mark.parametrize("model,layout,stall", [("digits_mlp.onnx", "flat", 0.0), ("digits_mlp.onnx", "flat", 0.3),
                                                ("digits_cnn.onnx", "NCHW", 0.2)])
def test_w8a8_with_dsp_cells_bit_exact(tmp_path, model, layout, stall):
    x_train, _, x_test, _ = digits(layout)
    graph = load_graph(_bundled(model), x_train, QuantConfig(w_bits=8, a_bits=8, calib_method="mse"))
    codes = reference.quantize_inputs(graph, x_test[:IMAGES])
    build = compile_graph(graph, tmp_path / "b", budget=budget_for(get_board("ulx3s_85f")), log=lambda *a: None)
    cells = build.netlist.count("cell \\MULT18X18D ")
    assert cells >= 4, "the ECP5 w8a8 build has no MULT18X18D pieces"
    assert build.verilog.count("module MULT18X18D") == 1       # the simulation model, once
    res = simulate(build, codes, stall=stall, log=lambda *a: None)
    want = reference.run(graph, codes)[graph.outputs[0]]
    got = res.outputs.reshape(want.shape)
    assert int((got != want).sum()) == 0, f"{int((got != want).sum())} of {want.size} elements differ"
