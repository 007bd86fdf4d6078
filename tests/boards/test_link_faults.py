"""Link faults against the gateware: the board core (UART, link, the build's accelerator Verilog)
in Verilator, the real host driver, and a transport that damages the board's RESULT frames
(`qfab.boards.link_sim.FaultyTransport`). Whatever happens on the wire, every output the driver
returns equals the reference (every element), or the input fails with a clean error naming it:
never a wrong answer. (The faults of issue 12: a RESULT received twice, a late RESULT after a
timeout with the Device used again, two compensating byte errors, two swapped bytes, a dropped
RESULT.)"""

import numpy as np
import pytest

from qfab.boards.link_sim import simulate_link
from qfab.compiler import reference
from qfab.compiler.compile import compile_graph
from qfab.compiler.datasets import digits
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import QuantConfig

pytestmark = [pytest.mark.verilator]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    from importlib.resources import files
    x_train, _, x_test, _ = digits("flat")
    graph = load_graph(str(files("qfab.compiler") / "data" / "digits_mlp.onnx"), x_train,
                       QuantConfig(w_bits=4, a_bits=4, calib_method="mse"))
    folder = tmp_path_factory.mktemp("link_faults")
    compile_graph(graph, folder, target_ii=64, log=lambda *a: None)
    codes = reference.quantize_inputs(graph, x_test[:10])
    want = reference.run(graph, codes)[graph.outputs[0]].reshape(len(codes), -1)
    return folder, codes.reshape(len(codes), -1), want


def _distinct(want, k):
    """Test inputs are only useful if neighbours differ (else a shifted answer looks right)."""
    assert not np.array_equal(want[k], want[k - 1]) and not np.array_equal(want[k], want[k + 1])


@pytest.mark.slow
def test_repeated_dropped_and_damaged_results_are_exact(build):
    """With retries: a RESULT received twice (the copy is dropped), one dropped (asked again after
    the timeout), one with two compensating byte errors and one with two bytes swapped (the CRC
    drops them; asked again at once). All ten outputs exact."""
    folder, codes, want = build
    faults = [(1, "dup"), (3, "drop"), (5, "compensate"), (7, "swap")]
    for k in (1, 3, 5, 7):
        _distinct(want, k)
    res = simulate_link(folder, codes, result_faults=faults, log=lambda *a: None)
    assert res.applied == faults
    assert res.outputs.shape == want.shape and np.array_equal(res.outputs, want)
    assert res.failed == {}
    # dropped: one timeout; compensate and swap: two frames with a bad CRC; each asked again
    assert res.stats["retries"] == 3 and res.stats["timeouts"] == 1 and res.stats["bad_frames"] == 2
    assert res.stats["stale_frames"] == 1                                  # the repeated copy


def test_without_retries_faults_are_clean_errors_never_wrong_answers(build):
    """No retries, and the caller goes on with the same Device after an error: a RESULT delayed
    past the timeout (it arrives during the next request and must not be taken for its answer), a
    repeated one, a damaged one. The failed inputs say so; every other output is exact."""
    folder, codes, want = build
    faults = [(2, "delay"), (4, "dup"), (6, "compensate")]
    for k in (2, 3, 4, 6):
        _distinct(want, k)
    codes, want = codes[:8], want[:8]
    res = simulate_link(folder, codes, result_faults=faults, retries=0, keep_going=True, log=lambda *a: None)
    assert res.applied == faults
    assert sorted(res.failed) == [2, 6]
    assert res.failed[2].startswith("input 2: no answer from the board")
    assert res.failed[6].startswith("input 6: no good RESULT from the board") and "bad CRC" in res.failed[6]
    ok = [k for k in range(len(codes)) if k not in res.failed]
    assert np.array_equal(res.outputs[ok], want[ok])
    assert res.stats["stale_frames"] == 2                                  # the late answer and the copy
