"""A place and route whose router no longer makes progress is stopped and placed again.

nextpnr's router has no iteration limit: on a congested placement it hovers at the same count
of arcs left for as long as it is let run (docs/boards.md: the digits MLP w8a8 on the ULX3S-85F
at about 145,000 arcs). `RouteWatch` reads nextpnr's log and says when to stop, `run_tool` stops
the tool and its children, and `build_bitstream` places the design again with other seeds, then
says the design is too congested.
"""

import subprocess
import time

import pytest

from qfab.boards import bitstream
from qfab.boards.toolchain import RouteWatch, ToolStopped, run_tool


def _log_line(arcs):
    """A line of nextpnr's router table, as in a real ``.tim`` log."""
    return f"Info:       1000 |      616        383 |  616   383 |    {arcs:6d}|       3.58       3.58|\n"


def _watch(counts, step, window=600.0):
    """The verdicts of a `RouteWatch` fed one count every ``step`` seconds."""
    watch = RouteWatch("unused.tim", window=window)
    verdicts = []
    for k, arcs in enumerate(counts):
        watch.feed(_log_line(arcs), k * step)
        verdicts.append(watch.stalled(k * step))
    return watch, verdicts


def test_a_converging_route_is_let_run():
    # the digits MLP w8a8's route that converged: 164,000 arcs down to 0 in about 400 s, with a
    # plateau of 50 s on the way; and a slow one, 10 % a window
    counts = [164_000, 162_000, 155_000, 149_000, 148_500, 145_000, 136_000, 128_000, 121_000, 110_000, 100_000,
              84_000, 68_000, 48_000, 29_000, 9_000, 2_000, 0]
    watch, verdicts = _watch(counts, 25)
    assert [a for _, a in watch.history] == counts and not any(verdicts)
    _, verdicts = _watch([int(100_000 * 0.89 ** k) for k in range(60)], 600)
    assert not any(verdicts)


def test_a_route_that_hovers_is_stopped_after_the_window():
    counts = [151_822, 147_114, 143_490] + [144_000 + (k * 337) % 1_500 for k in range(60)]
    _, verdicts = _watch(counts, 20)        # one count every 20 s: the window is 30 counts
    first = next(k for k, v in enumerate(verdicts) if v)
    assert 30 <= first <= 34, first
    assert "not made progress in 10 minutes (151822 arcs left then, 143490 at best since)" in verdicts[first]
    # the same hovering near the end (a few hundred arcs for half an hour) is stopped as well
    _, verdicts = _watch([5_000, 900, 226] + [226, 230, 228] * 20, 20)
    assert any(verdicts)


def test_no_verdict_before_a_window_of_counts():
    _, verdicts = _watch([100_000] * 20, 20)            # 380 s of the same count: too early to tell
    assert not any(verdicts)


def test_a_router_that_prints_no_count_for_a_window_is_stopped():
    # the digits MLP w4a4 on the ULX3S-85F: 774 arcs left, 191 four minutes later, then nothing
    # for half an hour (a count is printed every 1,000 arcs routed)
    watch = RouteWatch("unused.tim", window=600)
    watch.feed(_log_line(774), 796)
    watch.feed(_log_line(191), 1018)
    assert watch.stalled(1500) is None                  # under a window since the last count
    verdict = watch.stalled(1618)
    assert verdict and "no progress in 10 minutes (191 arcs left at its last count)" in verdict


def test_no_verdict_before_the_first_count_or_once_routed():
    watch = RouteWatch("unused.tim", window=600)
    assert watch.stalled(5000) is None                  # placement: no count yet, however long
    watch.feed(_log_line(74), 0)
    watch.feed(_log_line(74), 901)
    assert watch.stalled(1000)                          # a count, and no progress
    watch.feed("Info: Routing complete.\n", 1001)
    assert watch.stalled(1002) is None and watch.stalled(5000) is None     # timing analysis may follow


def test_the_watch_reads_the_log_as_it_grows(tmp_path):
    log = tmp_path / "qfab_board.tim"
    now = [0.0]
    watch = RouteWatch(log, window=60, clock=lambda: now[0])
    assert watch() is None                              # no log yet
    text = "Info: Routing..\n" + "".join(_log_line(a) for a in (9_000, 8_000))
    log.write_text(text[:-30])                          # a line cut in the middle
    assert watch() is None and [a for _, a in watch.history] == [9_000]
    with open(log, "a") as f:
        f.write(text[-30:])
    now[0] = 1.0
    assert watch() is None and [a for _, a in watch.history] == [9_000, 8_000]
    with open(log, "a") as f:
        f.write(_log_line(7_900))
    now[0] = 70.0
    assert "not made progress in 1 minutes (8000 arcs left then, 7900 at best since)" in watch()


def test_run_tool_stops_the_tool_and_what_it_started(tmp_path):
    calls = []

    def stop():
        calls.append(time.monotonic())
        return "enough" if len(calls) >= 2 else None

    start = time.monotonic()
    with pytest.raises(ToolStopped, match=r"^nap: sleep stopped after \d+ s: enough") as e:
        run_tool("sleep 30 & sleep 31; wait", tmp_path, tool="sleep", what="nap", stop=stop, poll=0.2)
    assert time.monotonic() - start < 10 and e.value.reason == "enough"
    # neither sleep is left running
    left = subprocess.run(["pgrep", "-f", "sleep 3[01]$"], capture_output=True, text=True).stdout.split()
    assert not left


def test_run_tool_with_a_stop_check_returns_as_before(tmp_path):
    run_tool("echo done > out.txt", tmp_path, tool="sh", what="echo", stop=lambda: None, poll=0.1)
    assert (tmp_path / "out.txt").read_text() == "done\n"
    with pytest.raises(Exception, match=r"echo: sh failed \(exit 3\)"):
        run_tool("exit 3", tmp_path, tool="sh", what="echo", stop=lambda: None, poll=0.1)


def _stalling_builds(monkeypatch, routes):
    """`bitstream._build_once` replaced: a stopped route for each seed not in ``routes``."""
    seeds = []

    def fake(build_dir, board_name, freq_mhz, out_dir, *, seed=None, log, **kwargs):
        seeds.append(seed)
        if seed not in routes:
            raise ToolStopped("place and route for the ulx3s_85f: nextpnr stopped after 900 s: hovering",
                              f"hovering (seed {seed})")
        return f"report with seed {seed}"

    monkeypatch.setattr(bitstream, "_build_once", fake)
    return seeds


def test_a_stalled_route_is_placed_again_with_another_seed(monkeypatch):
    seeds = _stalling_builds(monkeypatch, routes={3})
    lines = []
    assert bitstream._build_routed("b", "ulx3s_85f", None, None, log=lines.append) == ("report with seed 3", 3)
    assert seeds == [None, 2, 3]
    assert lines == ["placing again with placer seed 2: hovering (seed None)",
                     "placing again with placer seed 3: hovering (seed 2)"]


def test_a_retry_after_a_stalled_route_knows_the_seed_that_routed(monkeypatch):
    """A near miss on seed 2 (the placement that routed after the default one stalled) is not
    placed again with seed 2: the retry lowers the clock, as after any seed's near miss."""
    from types import SimpleNamespace
    calls = []

    def fake(build_dir, board_name, freq_mhz, out_dir, *, seed=None, log, **kwargs):
        calls.append((freq_mhz, seed))
        if seed is None:
            raise ToolStopped("place and route: stopped", "hovering")
        asked = freq_mhz or 100.0
        return SimpleNamespace(timing_met=False, fmax_mhz=0.97 * asked, requested_mhz=asked)

    monkeypatch.setattr(bitstream, "_build_once", fake)
    bitstream.build_bitstream("b", "ulx3s_85f", 100.0, log=lambda m: None, retries=1)
    assert calls[:2] == [(100.0, None), (100.0, 2)]
    assert (100.0, 2) not in calls[2:] and calls[2][0] < 97, calls


def test_a_route_that_stalls_with_every_seed_is_a_clear_error(monkeypatch):
    seeds = _stalling_builds(monkeypatch, routes=set())
    with pytest.raises(bitstream.RouteStalled, match=r"the router stopped making progress with every placement tried "
                       r"\(placer seeds default, 2, 3; last: hovering \(seed 3\)\).*fold deeper \(a larger --target-ii\)"):
        bitstream.build_bitstream("b", "ulx3s_85f", log=lambda m: None)
    assert seeds == [None, *bitstream.ROUTE_SEEDS]
    # a retry that asked for seed 2 goes on with seed 3, not seed 2 twice
    seeds.clear()
    with pytest.raises(bitstream.RouteStalled):
        bitstream._build_routed("b", "ulx3s_85f", 90, None, seed=2, log=lambda m: None)
    assert seeds == [2, 3]


def test_another_placement_of_the_same_design_is_not_synthesized_again(tmp_path, monkeypatch):
    """The seed retries of one `build_bitstream` at one clock place the netlist the first attempt
    synthesized (a resynthesis of the same design costs minutes on the ECP5); another clock or
    another call synthesizes again. The tools are replaced by a record of the steps they were
    asked for: a synthesis writes a netlist, the first place and route stalls."""
    from importlib.resources import files

    from qfab.compiler.compile import compile_graph
    from qfab.compiler.datasets import digits
    from qfab.compiler.load import load_graph
    from qfab.compiler.ptq import QuantConfig
    graph = load_graph(str(files("qfab.compiler") / "data" / "digits_mlp.onnx"), digits("flat")[0],
                       QuantConfig(w_bits=4, a_bits=4))
    compile_graph(graph, tmp_path / "b", target_ii=1024, log=lambda *a: None)
    steps, stalls = [], [1]

    def fake_step(variable, line, preamble, folder, env, board):
        steps.append(variable)
        if variable == "YOSYS":
            assert not (folder / f"{bitstream.NAME}.json").exists()     # no stale netlist before
            (folder / f"{bitstream.NAME}.json").write_text("{}")
        elif variable.startswith("NEXTPNR") and stalls:
            stalls.pop()
            raise ToolStopped("place and route: stopped", "hovering")

    monkeypatch.setattr(bitstream, "_run_step", fake_step)
    lines = []
    report = bitstream.build_bitstream(tmp_path / "b", "icebreaker", 30, log=lines.append, retries=0)
    assert steps == ["YOSYS", "NEXTPNR_ICE40", "NEXTPNR_ICE40", "ICEPACK"]
    assert any("the netlist of the attempt before" in line for line in lines)
    assert report.attempts == ((30, None),)
    # a new call synthesizes (the build folder may have changed between calls) ...
    steps.clear()
    bitstream.build_bitstream(tmp_path / "b", "icebreaker", 30, log=lambda m: None, retries=0)
    assert steps == ["YOSYS", "NEXTPNR_ICE40", "ICEPACK"]
    # ... and so does an attempt at another clock (the PLL and the UART divider differ)
    steps.clear()
    synthesized = {}
    for mhz in (30, 24):
        bitstream._build_routed(tmp_path / "b", "icebreaker", mhz, None, log=lambda m: None, baud=None,
                                core=None, attempts=[], synthesized=synthesized)
    assert steps == ["YOSYS", "NEXTPNR_ICE40", "ICEPACK"] * 2
