"""``qfab sweep``: a grid of points on a local Ray instance and in local processes, the cache per
point, failing points recorded without stopping the others, the tables, the Pareto front and the
page."""

import csv
import json
import sys

import numpy as np
import pytest
from amaranth_boards.icebreaker import ICEBreakerPlatform

from qfab import sweep, sweep_output
from qfab.base.errors import QfabError
from qfab.boards.registry import budget_for
from qfab.cli import main
from qfab.compiler import reference
from qfab.compiler.datasets import digits


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


MODEL = _bundled("digits_mlp.onnx")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    x_train, _, x_test, y_test = digits("flat")
    np.save(d / "calib.npy", x_train)
    np.save(d / "test.npy", x_test)
    np.save(d / "labels.npy", y_test)
    return d


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'qfab[sweep]')")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _reference_accuracy(data, bits):
    """The accuracy of the w{bits}a{bits} model computed here, in this process, from the reference."""
    from qfab import flow
    graph = flow.quantize(MODEL, np.load(data / "calib.npy"), flow.quant_config(w_bits=bits, a_bits=bits)).graph
    x, y = np.load(data / "test.npy"), np.load(data / "labels.npy")
    return float((reference.run_float(graph, x).argmax(-1) == y).mean())


@pytest.mark.slow
def test_sweep_on_ray_with_cache_and_failures(data, tmp_path, local_ray):
    """Six points on a local Ray instance (2 CPUs): 2, 4 and 8 bits at II 1024 fit the iCEBreaker,
    at II 8 none does; the failures are recorded with their estimate and the others complete. A
    second run takes every point from the cache and recomputes none."""
    out = tmp_path / "sweep"
    lines = []
    kwargs = dict(calib=data / "calib.npy", test=data / "test.npy", labels=data / "labels.npy",
                  boards=["icebreaker"], bits=[2, 4, 8], target_iis=[1024, 8], out_dir=out, log=lines.append)
    rows = sweep.sweep(MODEL, **kwargs)
    assert any(line.startswith("Ray: local instance, 2 CPUs") for line in lines)
    assert [(r["bits"], r["target_ii"]) for r in rows] == [(2, 1024), (2, 8), (4, 1024), (4, 8), (8, 1024), (8, 8)]
    assert sum(line.startswith("[") and "/6] " in line for line in lines) == 6       # progress per point
    budget = budget_for("icebreaker")
    for r in rows:
        if r["target_ii"] == 8:
            assert r["status"] == "failed" and "does not fit the board at II 8" in r["error"]
            assert r["fits"] is False and r["logic_cells"] > budget.logic_cells and r["budget_share"] > 1
        else:
            assert r["status"] == "ok", r["error"]
            assert r["ii"] == 1024 and r["fits"] is True and r["budget_share"] <= 1
            # the iCEBreaker's 12 MHz oscillator as amaranth-boards declares it, over the II the build
            # folder records: not the row's own clock_mhz and ii
            manifest = json.loads((out / "points" / r["key"] / "build" / "manifest.json").read_text())
            assert manifest["initiation_interval"] == 1024
            assert r["clock_mhz"] * 1e6 == ICEBreakerPlatform().default_clk_frequency == 12e6
            assert r["inferences_per_s"] == pytest.approx(12e6 / manifest["initiation_interval"])
    assert rows[2]["accuracy"] == _reference_accuracy(data, 4)
    # the tables and the page
    with open(out / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert [(t["bits"], t["target_ii"], t["status"]) for t in table] == \
        [(str(r["bits"]), str(r["target_ii"]), r["status"]) for r in rows]
    assert json.loads((out / "sweep.json").read_text())["points"] == json.loads(json.dumps(rows))
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "sweep.html").read_text()
    assert all(f'<section id="{key}">' in page for key in ("pareto", "points", "failures"))

    # the rerun: every point from the cache, none recomputed (result files untouched)
    stamps = {r["key"]: ((out / "points" / r["key"] / "result.json").stat().st_mtime_ns, r["finished"])
              for r in rows}
    lines.clear()
    again = sweep.sweep(MODEL, **kwargs)
    assert all(r["cached"] for r in again) and sum(": cached (" in line for line in lines) == 6
    assert not any(line.startswith("Ray:") for line in lines)             # no task was started
    assert {r["key"]: ((out / "points" / r["key"] / "result.json").stat().st_mtime_ns, r["finished"])
            for r in again} == stamps
    assert [(r["status"], r.get("ii"), r.get("accuracy")) for r in again] == \
        [(r["status"], r.get("ii"), r.get("accuracy")) for r in rows]


@pytest.mark.slow
def test_sweep_without_ray_runs_local_processes(data, tmp_path, monkeypatch):
    """Without Ray the same points run in local processes, and the sweep says so in one line."""
    monkeypatch.setitem(sys.modules, "ray", None)           # import ray fails
    assert not sweep.ray_available()
    lines = []
    rows = sweep.sweep(MODEL, calib=data / "calib.npy", boards=["icebreaker"], bits=[2], target_iis=[1024, 2],
                       out_dir=tmp_path / "sweep", workers=2, log=lines.append)
    assert [line for line in lines if "Ray" in line] == \
        ["Ray is not installed (pip install 'qfab[sweep]'): running the 2 points in local processes"]
    ok, bad = rows
    assert ok["status"] == "ok" and ok["ii"] == 1024 and ok["accuracy"] is None
    # no labels: top-1 agreement with the float model, here run by onnxruntime
    ort = pytest.importorskip("onnxruntime")
    x = np.load(data / "calib.npy")
    session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    want = session.run(None, {session.get_inputs()[0].name: x})[0].argmax(-1)
    from qfab import flow
    graph = flow.quantize(MODEL, x, flow.quant_config(w_bits=2, a_bits=2)).graph
    assert ok["agreement"] == float((reference.run_float(graph, x).argmax(-1) == want).mean())


@pytest.mark.slow
def test_sweep_command_reuses_the_cache(data, tmp_path, capsys):
    """``qfab sweep`` run twice on one folder (local processes): the second run computes nothing."""
    out = tmp_path / "s"
    argv = ["sweep", MODEL, "--calib", str(data / "calib.npy"), "--boards", "icebreaker", "--bits", "2",
            "--target-ii", "1024,2", "--processes", "--workers", "2", "-o", str(out)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "Ray" not in first and "1 of 2 points done, 1 failed" in first
    results = sorted(out.glob("points/*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    assert len(results) == 2
    assert main(argv) == 0
    second = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert [line.split(": ", 1)[1].split(" (")[0] for line in second] == ["cached", "cached"]
    assert [p.stat().st_mtime_ns for p in sorted(out.glob("points/*/result.json"))] == stamps


def test_point_that_cannot_fit_fails_before_lowering(data):
    """A target interval too small for the board fails by the estimate, without lowering (no build)."""
    inputs = sweep.Inputs.load(MODEL, data / "calib.npy")
    result, tar, log = sweep.run_point(sweep.Job(inputs, sweep.Point("icebreaker", 8, 8), sweep.Options()))
    assert result["status"] == "failed" and result["fits"] is False and tar == b""
    assert result["error"] == (f"does not fit the board at II 8: estimated logic cells {result['logic_cells']} > "
                               f"{budget_for('icebreaker').logic_cells} available")
    assert "compile" not in result["seconds"]


def test_cache_key_follows_model_data_point_and_options(data):
    x = np.load(data / "calib.npy")
    inputs = sweep.Inputs("m.onnx", b"model", x)
    job = sweep.Job(inputs, sweep.Point("icebreaker", 4, None), sweep.Options())
    key = sweep.job_key(job)
    assert key == sweep.job_key(sweep.Job(sweep.Inputs("m.onnx", b"model", x.copy()), job.point, job.options))
    changed = [sweep.Job(sweep.Inputs("m.onnx", b"model2", x), job.point, job.options),
               sweep.Job(sweep.Inputs("m.onnx", b"model", x[:-1]), job.point, job.options),
               sweep.Job(inputs, sweep.Point("icebreaker", 8, None), job.options),
               sweep.Job(inputs, sweep.Point("ulx3s_85f", 4, None), job.options),
               sweep.Job(inputs, sweep.Point("icebreaker", 4, 64), job.options),
               sweep.Job(inputs, job.point, sweep.Options(simulate=True))]
    assert len({key, *(sweep.job_key(j) for j in changed)}) == 7


def test_pareto_front():
    def row(name, acc, speed, status="ok"):
        return {"name": name, "status": status, "accuracy": acc, "inferences_per_s": speed}
    rows = [row("a", 0.9, 100), row("b", 0.95, 50), row("c", 0.85, 100), row("d", 0.9, 80),
            row("e", 0.97, 10), row("f", 0.99, 1000, status="failed"), row("g", 0.95, 50)]
    assert [r["name"] for r in sweep_output.pareto_front(rows)] == ["a", "b", "g", "e"]


@pytest.mark.parametrize("argv, message", [
    (["--bits", "4,9"], "--bits must be integers from 1 to 8"),
    (["--bits", "four"], "--bits must be comma-separated integers"),
    (["--target-ii", "0"], "--target-ii must be integers from 1"),
    (["--boards", "icebreaker,nope"], "unknown board 'nope'"),
])
def test_bad_arguments(data, tmp_path, capsys, argv, message):
    code = main(["sweep", MODEL, "--calib", str(data / "calib.npy"), "-o", str(tmp_path / "s"), *argv])
    assert code == 1 and message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_model_must_be_float_onnx_with_calibration(data, tmp_path):
    from qfab import flow
    from qfab.compiler.modelfile import save
    graph = flow.quantize(MODEL, np.load(data / "calib.npy")[:100]).graph
    with open(tmp_path / "m.qfab", "wb") as f:
        save(graph, f)
    for model, calib, message in [(MODEL, None, "is a float model: give calibration data"),
                                  (tmp_path / "m.qfab", data / "calib.npy", "give the .onnx")]:
        with pytest.raises(QfabError, match=message):
            sweep.sweep(model, calib=calib, boards=["icebreaker"], bits=[4], out_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_labels_must_match_the_test_inputs(data):
    with pytest.raises(QfabError, match=r"labels have shape \(360,\); expected one label per test input \(1437,\)"):
        sweep.Inputs.load(MODEL, data / "calib.npy", labels=data / "labels.npy")
