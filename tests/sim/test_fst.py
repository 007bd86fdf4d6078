"""VCD to FST conversion (`qfab.sim.fst`) on a small hand-written VCD, without a Verilator build
(test_harness.py converts a real Verilator trace; that one is marked slow)."""

VCD = """$date today $end
$version hand-written $end
$timescale 1ps $end
$scope module top $end
$var wire 1 ! clk $end
$var wire 4 " data [3:0] $end
$var wire 4 " data_alias [3:0] $end
$scope module inner $end
$var reg 1 # valid $end
$upscope $end
$upscope $end
$enddefinitions $end
#0
$dumpvars
0!
b0 "
x#
$end
#5
1!
b1010 "
1#
#10
0!
bx "
z#
"""


def test_vcd_to_fst_keeps_variables_and_time(tmp_path):
    from pylibfst import ffi, lib

    from qfab.sim.fst import vcd_to_fst
    (tmp_path / "run.vcd").write_text(VCD)
    assert vcd_to_fst(tmp_path / "run.vcd", tmp_path / "run.fst") == 3          # aliases share a handle
    reader = lib.fstReaderOpen(str(tmp_path / "run.fst").encode())
    assert reader != ffi.NULL
    try:
        assert lib.fstReaderGetVarCount(reader) == 4
        assert lib.fstReaderGetEndTime(reader) == 10
    finally:
        lib.fstReaderClose(reader)
