"""The flow API from a script, and the build folder it leaves: round trip, version check, hashes,
paths kept inside the folder, and a save that is all or nothing."""

import json

import numpy as np
import pytest

from qfab import flow
from qfab.base.errors import QfabError
from qfab.compiler import buildfolder
from qfab.compiler.buildfolder import (
    Build,
    BuildFiles,
    Estimates,
    FieldSlice,
    FifoInfo,
    Manifest,
    ResourceCount,
    StageInfo,
    StreamFormat,
)
from qfab.compiler.datasets import digits


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


def _manifest(**over):
    fields = dict(input=StreamFormat("x", (6,), 6, 2, 4, False), output=StreamFormat("y", (2, 3), 6, 3, 5, True),
                  initiation_interval=8, latency_estimate=20,
                  stages=(StageInfo("dense", "dense", "mvau", pe=2, simd=2, style="bit_parallel", cycles=8),),
                  fifos=(FifoInfo("e0", "i", "dense.i", 4, "x", 2),),
                  estimates=Estimates(per_layer={"dense": ResourceCount(luts=10, ffs=5)},
                                      streams={"fifos": ResourceCount(luts=2)},
                                      total=ResourceCount(luts=12, ffs=5, logic_cells=14), family="ice40", model="m"),
                  observe_layout={"e0": {"level": FieldSlice(0, 3)}},
                  counters_layout={"dense.i": {"fire": FieldSlice(0, 32), "wait": FieldSlice(32, 32)}}, activity_bits=2,
                  m_bits=24)
    fields.update(over)
    return Manifest(**fields)


def _files(verilog="module qfab_top(); endmodule\n"):
    return {"qfab_top.v": verilog, "model.qfab": b"\x00model"}


@pytest.fixture
def saved(tmp_path):
    return Build.save(tmp_path / "b", _manifest(), _files())


def test_round_trip(saved, tmp_path):
    again = Build.load(tmp_path / "b")
    assert again.manifest == saved.manifest == _manifest()
    assert again.manifest.stage("dense").cycles == 8 and again.manifest.output.beats == 2
    assert again.verilog == "module qfab_top(); endmodule\n"
    assert again.model_path.read_bytes() == b"\x00model"
    doc = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert (doc["format"], doc["version"]) == ("qfab-build", buildfolder.VERSION)
    assert set(doc["sha256"]) == {"qfab_top.v", "model.qfab"}
    assert again.manifest.estimates.total.as_dict() == {"luts": 12, "ffs": 5, "dsps": 0, "bram_bits": 0,
                                                        "bram_blocks": 0, "logic_cells": 14}


def test_reports(saved):
    assert saved.reports() == ()
    path = saved.write_report("simulation", {"verdict": "bit-exact", "interval": 8.0})
    assert path == saved.folder / "reports" / "simulation.json"
    assert saved.read_report("simulation") == {"verdict": "bit-exact", "interval": 8.0}
    assert saved.reports() == ("simulation",)
    assert Build.load(saved.folder).read_report("simulation")["verdict"] == "bit-exact"   # not a hashed file
    with pytest.raises(QfabError, match="no bitstream report"):
        saved.read_report("bitstream")
    with pytest.raises(ValueError, match="plain name"):
        saved.write_report("../up", {})


@pytest.mark.parametrize("version, phrase", [(buildfolder.VERSION + 1, "newer than this qfab reads"),
                                             (1, "older than this qfab reads"),
                                             ("2", "not a qfab build manifest")])
def test_version_check(saved, version, phrase):
    path = saved.folder / "manifest.json"
    doc = json.loads(path.read_text())
    doc["version"] = version
    path.write_text(json.dumps(doc))
    with pytest.raises(QfabError, match=phrase) as e:
        Build.load(saved.folder)
    assert str(saved.folder) in str(e.value)


def test_missing_or_foreign_manifest(saved, tmp_path):
    with pytest.raises(QfabError, match=r"not a qfab build folder \(no manifest.json\); run qfab compile"):
        Build.load(tmp_path / "elsewhere")
    path = saved.folder / "manifest.json"
    path.write_text(json.dumps({"format": "finn-build", "version": 1}))
    with pytest.raises(QfabError, match="not a qfab build manifest"):
        Build.load(saved.folder)
    path.write_text("{")
    with pytest.raises(QfabError, match="not a readable qfab build manifest"):
        Build.load(saved.folder)


def test_malformed_manifest(saved):
    path = saved.folder / "manifest.json"
    doc = json.loads(path.read_text())
    del doc["input"]
    path.write_text(json.dumps(doc))
    with pytest.raises(QfabError, match="malformed qfab build manifest"):
        Build.load(saved.folder)


def test_netlist_beside_the_verilog(tmp_path):
    """A version 4 folder keeps the RTLIL (hashed like every file) and hands it to synthesis; a
    version 3 folder (no netlist) still loads and synthesizes its Verilog."""
    rtlil = "module \\qfab_top\nend\n"
    build = Build.save(tmp_path / "b", _manifest(files=BuildFiles(netlist="qfab_top.il")),
                       {**_files(), "qfab_top.il": rtlil})
    again = Build.load(build.folder)
    assert again.netlist == rtlil and again.synthesis_files() == {"qfab_top.il": rtlil}
    (build.folder / "qfab_top.il").write_text(rtlil + "# edited\n")
    with pytest.raises(QfabError, match="qfab_top.il differs from the file qfab compile wrote"):
        Build.load(build.folder)
    old = Build.save(tmp_path / "old", _manifest(), _files())
    path = old.folder / "manifest.json"
    doc = json.loads(path.read_text())
    doc["version"] = 3
    path.write_text(json.dumps(doc))
    again = Build.load(old.folder)
    assert again.netlist is None
    assert again.synthesis_files() == {"qfab_top.v": "module qfab_top(); endmodule\n"}


def test_tampered_or_missing_file_is_refused(saved):
    (saved.folder / "qfab_top.v").write_text("module qfab_top(); wire x; endmodule\n")
    with pytest.raises(QfabError, match="qfab_top.v differs from the file qfab compile wrote"):
        Build.load(saved.folder)
    (saved.folder / "qfab_top.v").unlink()
    with pytest.raises(QfabError, match="qfab_top.v is missing"):
        Build.load(saved.folder)


@pytest.mark.parametrize("name", ["../outside.v", "/tmp/outside.v", "sub/../../outside.v"])
def test_paths_outside_the_folder_are_refused(saved, tmp_path, name):
    path = saved.folder / "manifest.json"
    doc = json.loads(path.read_text())
    doc["files"]["verilog"] = name
    doc["sha256"][name] = doc["sha256"]["qfab_top.v"]
    path.write_text(json.dumps(doc))
    (tmp_path / "outside.v").write_text("module qfab_top(); endmodule\n")
    with pytest.raises(QfabError, match="outside the build folder"):
        Build.load(saved.folder)
    with pytest.raises(QfabError, match="outside the build folder"):
        Build.save(tmp_path / "c", _manifest(files=BuildFiles(verilog=name)),
                   {name: "", "model.qfab": b""})


def test_save_replaces_a_build_whole(saved, tmp_path):
    saved.write_report("simulation", {"verdict": "bit-exact"})
    (saved.folder / "bitstream").mkdir()
    again = Build.save(saved.folder, _manifest(initiation_interval=16), _files("module qfab_top(); wire y; endmodule\n"))
    assert Build.load(saved.folder).manifest.initiation_interval == 16 == again.manifest.initiation_interval
    assert again.reports() == () and not (saved.folder / "bitstream").exists()     # they were the old design's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]                       # no temporary folder left


def test_interrupted_save_leaves_the_old_folder(saved, tmp_path, monkeypatch):
    before = {p.name: p.read_bytes() for p in saved.folder.iterdir()}
    calls = []

    def fail_on_second(path, content):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        path.write_bytes(content)
    monkeypatch.setattr(buildfolder, "_write_file", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        Build.save(saved.folder, _manifest(initiation_interval=16), _files("module qfab_top(); wire y; endmodule\n"))
    assert {p.name: p.read_bytes() for p in saved.folder.iterdir()} == before
    assert Build.load(saved.folder).manifest == _manifest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_a_folder_that_is_not_a_build_is_not_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(QfabError, match="not empty and not a qfab build folder"):
        Build.save(tmp_path, _manifest(), _files())
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.verilator
@pytest.mark.slow
def test_flow_from_a_script(tmp_path):
    """Quantize the digits MLP, compile, simulate: every output element equals the reference,
    and the simulation's results are in the build folder."""
    x_train, _, x_test, _ = digits("flat")
    q = flow.quantize(_bundled("digits_mlp.onnx"), x_train,
                      flow.quant_config(w_bits=4, a_bits=4, calib_method="mse"), log=lambda m: None)
    lines = []
    c = flow.compile(q.graph, tmp_path / "build", target_ii=64, log=lines.append)
    assert c.manifest.initiation_interval == 64 and any("wrote" in line for line in lines)
    assert Build.load(tmp_path / "build").manifest == c.manifest
    s = flow.simulate(tmp_path / "build", x_test[:40], log=lambda m: None)
    assert s.outputs.shape == (40, 10) and s.comparison.elements == 400
    assert s.comparison.bit_exact, s.comparison.describe()
    from qfab.compiler import reference
    want = reference.run(q.graph, reference.quantize_inputs(q.graph, x_test[:40]))[q.graph.outputs[0]]
    assert np.array_equal(s.outputs, want)
    report = c.build.read_report("simulation")
    assert report["verdict"] == "bit-exact" and report["bound"] == 64 and report["inferences"] == 40
    assert set(report["utilization"]) == {st.name for st in c.manifest.stages}
    flow.save_outputs(q.graph, s.outputs, tmp_path / "y.npy", integer=True)
    assert np.array_equal(np.load(tmp_path / "y.npy"), want)
    # the same build on the board's gateware (UART, link, accelerator), through the host driver
    r = flow.run(c.build, "icebreaker", x_test[:4], sim=True, check=True, log=lambda m: None)
    assert r.simulated and r.comparison.bit_exact and np.array_equal(r.outputs, want[:4])
