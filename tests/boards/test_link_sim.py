"""The board's gateware end to end: the real host driver (`Device`) talks over a simulated UART to
the inference core (UART, framed link, the build's accelerator Verilog) running in Verilator; every
output element must equal the reference, also when frames are damaged on the wire."""

import pytest

from qfab.boards.link_sim import simulate_link
from qfab.compiler import reference
from qfab.compiler.compile import compile_graph
from qfab.compiler.datasets import digits
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import QuantConfig

pytestmark = [pytest.mark.verilator]


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


@pytest.fixture(scope="module", params=[("digits_mlp.onnx", "flat", 4, 64),
                                        pytest.param(("digits_cnn.onnx", "NCHW", 8, 1152), marks=pytest.mark.slow)],
                ids=["mlp_w4a4", "cnn_w8a8"])
def build(request, tmp_path_factory):
    file, layout, bits, ii = request.param
    x_train, _, x_test, _ = digits(layout)
    graph = load_graph(_bundled(file), x_train, QuantConfig(w_bits=bits, a_bits=bits, calib_method="mse"))
    folder = tmp_path_factory.mktemp("link_build")
    compile_graph(graph, folder, target_ii=ii, log=lambda *a: None)
    codes = reference.quantize_inputs(graph, x_test[:40])
    return graph, folder, codes


@pytest.mark.slow
def test_bit_exact_through_the_uart(build):
    graph, folder, codes = build
    res = simulate_link(folder, codes.reshape(len(codes), -1), divisor=8, log=lambda *a: None)
    want = reference.run(graph, codes)[graph.outputs[0]].reshape(len(codes), -1)
    assert res.outputs.shape == want.shape
    assert int((res.outputs != want).sum()) == 0
    assert res.stats["retries"] == 0 and res.stats["errors"] == []
    assert res.info["in_elements"] == codes[0].size and res.info["out_elements"] == want.shape[1]


def test_damaged_frames_are_resent_and_results_stay_exact(build):
    graph, folder, codes = build
    codes = codes[:6]
    faults = [(0, "flip"), (2, "cut"), (4, "flip")]          # frame 0 is the INFO request
    res = simulate_link(folder, codes.reshape(len(codes), -1), divisor=8, faults=faults, log=lambda *a: None)
    want = reference.run(graph, codes)[graph.outputs[0]].reshape(len(codes), -1)
    assert int((res.outputs != want).sum()) == 0
    assert res.stats["retries"] == 3
    assert [e.split(" (")[0] for e in res.stats["errors"]] == ["bad CRC", "frame timed out half-way", "bad CRC"]
    assert res.stats["stale_frames"] == 0 and res.stats["bad_frames"] == 0
