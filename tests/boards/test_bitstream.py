"""Real bitstreams of the digits MLP with the open toolchain, their reports parsed.

The builds (about a minute each) are marked slow: CI runs them, the fast loop (-m "not slow") does not.
"""

import pytest

from qfab.base.errors import QfabError
from qfab.boards.bitstream import build_bitstream
from qfab.cli import main
from qfab.compiler.compile import compile_graph
from qfab.compiler.datasets import digits
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import QuantConfig

pytestmark = [pytest.mark.board]


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


def _mlp(folder, bits, ii):
    x_train, _, _, _ = digits("flat")
    graph = load_graph(_bundled("digits_mlp.onnx"), x_train, QuantConfig(w_bits=bits, a_bits=bits, calib_method="mse"))
    return compile_graph(graph, folder, target_ii=ii, log=lambda *a: None)


def _check(report, lut_cell, family):
    assert report.family == family
    used, available = report.utilization[lut_cell]
    assert 0 < used <= available
    assert report.fmax_mhz is not None and report.fmax_mhz > 0
    assert report.bitstream.is_file() and report.bitstream.stat().st_size > 10000
    assert report.yosys.luts > 0 and report.yosys.ffs > 0


@pytest.mark.slow
def test_icebreaker_bitstream(tmp_path):
    est = _mlp(tmp_path, 4, 1024).manifest.estimates
    lines = []
    report = build_bitstream(tmp_path, "icebreaker", log=lines.append)
    _check(report, "ICESTORM_LC", "ice40")
    # the UP5K's 8 DSPs are dear: requantization in logic at this fold, as the estimate counted
    assert report.utilization.get("ICESTORM_DSP", (0, 8))[0] == est.total.dsps == 0
    assert report.requested_mhz == 12 and report.timing_met
    assert any("synthesis" in line for line in lines)       # progress while the tools ran


@pytest.mark.slow
def test_the_board_synthesizes_the_netlist_the_verilog_was_written_from(tmp_path):
    """The bitstream flow reads the build's qfab_top.il (Yosys's Verilog front end is far slower on
    weight memories); the simulators read qfab_top.v. Both are one design: synthesized alone, the
    two texts give the same flip-flops, carries, block RAMs and DSPs, and LUTs within 1 % (ABC's
    mapping differs by a few LUTs on the two structurally equal netlists: 990 and 993 here); and the
    board's Yosys script reads the RTLIL."""
    from qfab.boards.synth import synthesize
    from qfab.compiler.buildfolder import Build
    build = Build.load(_mlp(tmp_path / "b", 4, 1024).folder)
    assert build.synthesis_files() == {"qfab_top.il": build.netlist}
    assert "module \\qfab_top\n" in build.netlist and "module qfab_top(" in build.verilog
    from_il = synthesize(build.netlist, "ice40", top="qfab_top", log=None)
    from_v = synthesize(build.verilog, "ice40", top="qfab_top", log=None)
    a, v = from_il.total, from_v.total
    assert (a.ffs, a.carries, a.bram, a.dsps) == (v.ffs, v.carries, v.bram, v.dsps) and a.ffs > 200
    assert a.luts > 500 and abs(a.luts - v.luts) <= 0.01 * v.luts
    report = build_bitstream(tmp_path / "b", "icebreaker", log=lambda *a: None)
    script = (report.bitstream.parent / "qfab_board.ys").read_text()
    assert "read_rtlil qfab_top.il" in script and "qfab_top.v" not in script


@pytest.mark.slow
def test_a_missed_clock_is_built_again_at_the_achieved_fmax(tmp_path):
    """Asked for 150 MHz, a UP5K misses it; the retry places and routes again at the Fmax the first
    attempt reached (a PLL frequency 2 % below it), and the report lists both attempts."""
    _mlp(tmp_path, 4, 1024)
    lines = []
    report = build_bitstream(tmp_path, "icebreaker", freq_mhz=150, log=lines.append, retries=1)
    (first_mhz, first_fmax), (second_mhz, second_fmax) = report.attempts
    assert first_mhz == 150 and first_fmax < 150
    assert second_mhz == report.requested_mhz and second_mhz <= first_fmax * 0.99
    assert second_fmax == report.fmax_mhz
    assert any("placing and routing again at" in line for line in lines)
    assert report.as_dict()["attempts"] == [list(a) for a in report.attempts]
    # just above the Fmax reached: a miss there is placed again at the same clock, another seed
    from qfab.boards.gateware.top import clock_mhz
    from qfab.boards.registry import get_board
    near = next(f for f in (round(second_fmax * (1 + 0.005 * k), 1) for k in range(1, 20))
                if second_fmax < clock_mhz(get_board("icebreaker"), f) <= second_fmax * 1.04)
    report = build_bitstream(tmp_path, "icebreaker", freq_mhz=near, log=lines.append, retries=1)
    script = (report.bitstream.parent / "build_qfab_board.sh").read_text()
    first_mhz, first_fmax = report.attempts[0]
    if first_fmax >= first_mhz:
        assert report.attempts == ((first_mhz, first_fmax),) and "--seed" not in script
    elif first_fmax >= 0.95 * first_mhz:                # another seed at the same clock, then (not
        assert report.attempts[1][0] == first_mhz       # counted) one retry at a lower clock
        assert len(report.attempts) in (2, 3) and ("--seed 2" in script) == (len(report.attempts) == 2)
    else:
        assert len(report.attempts) == 2 and report.attempts[1][0] < first_mhz and "--seed" not in script


def test_retry_frequency_is_one_the_clock_gives_below_the_fmax():
    from qfab.boards.bitstream import retry_mhz
    from qfab.boards.gateware.top import clock_mhz
    from qfab.boards.registry import get_board
    for board, fmax in (("icebreaker", 32.29), ("icebreaker", 47.0), ("ulx3s_85f", 86.7), ("orangecrab", 61.3)):
        ask = retry_mhz(get_board(board), fmax)
        got = clock_mhz(get_board(board), ask)
        assert fmax * 0.95 < got <= fmax * 0.99, (board, fmax, ask, got)


def test_a_near_miss_is_placed_again_with_another_seed_first():
    """Within 5 % of the clock (nextpnr's spread between placements) the retry keeps the clock and
    changes the placer seed, once; a larger miss, or a second one, brings the clock down to a
    frequency the PLL gives below the achieved Fmax."""
    from qfab.boards.bitstream import next_attempt, retry_mhz
    from qfab.boards.registry import get_board
    board = get_board("icebreaker")
    assert next_attempt(board, 36, 35.4, None) == (36, 2)
    assert next_attempt(board, 36, 33.9, None) == (retry_mhz(board, 33.9), None)
    assert next_attempt(board, 36, 35.4, 2) == (retry_mhz(board, 35.4), None)
    assert retry_mhz(board, 35.4) < 35.4


@pytest.mark.slow
def test_ulx3s_bitstream_with_pll(tmp_path):
    _mlp(tmp_path, 8, 256)
    report = build_bitstream(tmp_path, "ulx3s_85f", freq_mhz=50, log=lambda *a: None)
    _check(report, "TRELLIS_COMB", "ecp5")
    assert report.requested_mhz == 50 and report.utilization["EHXPLLL"][0] == 1


@pytest.mark.slow
def test_a_design_that_does_not_fit_names_the_resource(tmp_path):
    _mlp(tmp_path, 4, 64)
    with pytest.raises(QfabError, match=r"does not fit the icebreaker .*logic cells \(ICESTORM_LC\) \d+ used of 5280.*--target-ii"):
        build_bitstream(tmp_path, "icebreaker", log=lambda *a: None)


def test_deploy_without_a_programmer_says_what_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    folder = tmp_path / "bitstream" / "icebreaker"
    folder.mkdir(parents=True)
    (folder / "qfab_board.bin").write_bytes(b"\x00" * 16)
    assert main(["deploy", str(tmp_path), "--board", "icebreaker"]) == 0     # the message is the answer
    out = capsys.readouterr().out
    assert "iceprog" in out and "qfab_board.bin" in out


def test_boards_command(capsys):
    assert main(["boards"]) == 0
    out = capsys.readouterr().out
    for name in ("icebreaker", "upduino_v3", "ulx3s_85f", "orangecrab"):
        assert name in out


@pytest.mark.slow
def test_build_command_runs_the_whole_flow(tmp_path, capsys, monkeypatch):
    """``qfab build``: quantize, fold for the board, lower, bitstream, summary."""
    import json

    import numpy as np
    monkeypatch.setenv("QFAB_CACHE", str(tmp_path / "cache"))
    np.save(tmp_path / "calib.npy", digits("flat")[0])
    out = tmp_path / "build"
    assert main(["build", _bundled("digits_mlp.onnx"), "--calib", str(tmp_path / "calib.npy"), "--wbits", "4",
                 "--abits", "4", "--board", "icebreaker", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    for step in ("[1/3] quantizing", "[2/3] lowering for the icebreaker", "[3/3] bitstream for the icebreaker",
                 "logic cells (ICESTORM_LC)", "summary:", "next: qfab deploy"):
        assert step in text, step
    bitstream = out / "bitstream" / "icebreaker" / "qfab_board.bin"
    assert bitstream.is_file() and bitstream.stat().st_size > 10000
    report = json.loads((bitstream.parent / "report.qfab.json").read_text())
    used, available = report["utilization"]["ICESTORM_LC"]
    assert used <= available and report["timing_met"]
    remembered = json.loads((tmp_path / "cache" / "boards" / "icebreaker.json").read_text())
    assert remembered["clock_mhz"] == 12.0 and remembered["bitstream"] == str(bitstream)
