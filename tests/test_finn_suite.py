"""bench/finn_suite.py without the toolchain: the points, the table, the cache and resume logic."""

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
finn_suite = pytest.importorskip("finn_suite")


def fake_ok(point, folder, *, freq_mhz=None, log=print):
    """A stand-in for `build_point`: an ECP5 report with round numbers."""
    log("fake build")
    return {"status": "ok", "macs": 59008, "ii": 64,
            "report": {"family": "ecp5", "fmax_mhz": 100.0, "timing_met": True,
                       "utilization": {"TRELLIS_COMB": [2000, 83640], "TRELLIS_FF": [1500, 83640],
                                       "DP16KD": [3, 208], "MULT18X18D": [0, 156]}}}


def test_list_names_the_points(tmp_path, capsys):
    finn_suite.main(["--list", "--topologies", "tfc", "--boards", "ulx3s-85f,icebreaker", "--out", str(tmp_path)])
    keys = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert keys == [f"tfc_w{b}a{b}_ii{ii}_{board}" for b in (1, 2) for ii in (1024, 64)
                    for board in ("ulx3s_85f", "icebreaker")]


def test_table_from_a_result():
    r = {"topology": "sfc", "bits": 1, "target_ii": 64, "board": "ulx3s_85f", **fake_ok(None, None)}
    cells = finn_suite.row_cells(r)
    assert cells[2:10] == ["2,000", "1,500", "3", "0", "100.0", "64", "1,562,500", "461.0"]
    assert "12.3 M images/s" in cells[-1]
    md = finn_suite.format_table([r, r | {"status": "does not fit", "reason": "too big"}], markdown=True)
    assert md.count("\n") == 3 and "does not fit: too big" in md


def test_resume_skips_finished_points_and_redoes_interrupted_ones(tmp_path):
    calls = []

    def builder(point, folder, *, freq_mhz=None, log=print):
        calls.append(point["key"])
        return fake_ok(point, folder)

    todo = finn_suite.points(["tfc"], [1], ["ulx3s_85f"])
    assert len(todo) == 2
    first = finn_suite.run_points(todo, tmp_path, builder=builder, say=lambda m: None)
    assert [r["status"] for r in first] == ["ok", "ok"] and len(calls) == 2
    assert (tmp_path / todo[0]["key"] / finn_suite.LOG).read_text().strip().endswith("fake build")
    # interrupted: the folder is there, its result is not
    (tmp_path / todo[1]["key"] / finn_suite.RESULT).unlink()
    finn_suite.run_points(todo, tmp_path, builder=builder, say=lambda m: None)
    assert calls[2:] == [todo[1]["key"]]
    # an error is recorded and redone; --force redoes everything
    def broken(point, folder, *, freq_mhz=None, log=print):
        raise RuntimeError("tool crashed")
    r = finn_suite.run_points(todo, tmp_path, builder=broken, force=True, say=lambda m: None)
    assert r[0]["status"] == "error" and "tool crashed" in r[0]["reason"]
    assert json.loads((tmp_path / todo[0]["key"] / finn_suite.RESULT).read_text())["status"] == "error"
    finn_suite.run_points(todo, tmp_path, builder=builder, say=lambda m: None)
    assert calls[3:] == [t["key"] for t in todo]
    assert len(finn_suite.cached_results(tmp_path)) == 2
