"""Outputs go to exactly the path named, never over an input, never beside a folder; bad output
paths and option values are refused before any work, in one line."""

import os

import numpy as np
import pytest

from qfab import flow
from qfab.base.errors import QfabError
from qfab.cli import main
from qfab.compiler import reference
from qfab.compiler.modelfile import save

from .compiler.graphs import dense_graph, random_codes


@pytest.fixture
def work(tmp_path, monkeypatch):
    g = dense_graph(k=12, n=5)
    save(g, tmp_path / "m.qfab")
    np.save(tmp_path / "data.npy", random_codes(g, 4)[g.inputs[0]])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QFAB_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_output_without_npy_suffix_is_written_exactly_there(work, capsys):
    before = (work / "data.npy").read_bytes()
    assert main(["reference", "m.qfab", "--input", "data.npy", "-o", "data", "--int"]) == 0
    assert (work / "data.npy").read_bytes() == before             # the input is untouched
    out = np.load(work / "data")                                   # the output is "data", nothing else
    from qfab.compiler.modelfile import load
    graph = load(work / "m.qfab")
    want = reference.run(graph, np.load(work / "data.npy"))[graph.outputs[0]]
    assert out.dtype == np.int64 and np.array_equal(out, reference.output_codes(graph, want))
    assert "wrote data " in capsys.readouterr().out
    assert sorted(p.name for p in work.iterdir() if p.is_file()) == ["data", "data.npy", "m.qfab"]


@pytest.mark.parametrize("argv, message", [
    (["reference", "m.qfab", "--input", "data.npy", "-o", "data.npy"], "is the input data.npy"),
    (["reference", "m.qfab", "--input", "data.npy", "-o", "./sub/../data.npy"], "is the input data.npy"),
    (["reference", "m.qfab", "--input", "data.npy", "-o", "sub"], "is a folder"),
    (["reference", "m.qfab", "--input", "data.npy", "-o", "nope/y.npy"], "does not exist"),
    (["quantize", "m.qfab", "-o", "m.qfab"], "is the input m.qfab"),
    (["compile", "m.qfab", "-o", "nope/build"], "does not exist"),
    (["compile", "m.qfab", "-o", "data.npy"], "exists and is not a folder"),
    (["compile", "m.qfab", "-o", "sub"], "not empty and not a qfab build folder"),
    (["compile", "m.qfab", "-o", "build", "--plot", "plot"], "matplotlib cannot write a file without a suffix"),
    (["compile", "m.qfab", "-o", "build", "--plot", "p.xyz"], ".png"),
    (["compile", "sub/m2.qfab", "-o", "sub"], "holds the input"),
    (["demo", "--out", "data.npy"], "exists and is not a folder"),
    (["train", "-o", "t.qfab", "--qdq", "t.qfab"], "the same file"),
])
def test_bad_outputs_are_refused_before_any_work(work, capsys, argv, message):
    (work / "sub").mkdir()
    (work / "sub" / "keep.txt").write_text("mine")
    (work / "sub" / "m2.qfab").write_bytes((work / "m.qfab").read_bytes())
    before = _files(work)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert _files(work) == before
    assert sorted(p.name for p in work.iterdir()) == sorted(["m.qfab", "data.npy", "sub"])


def test_output_through_a_symlink_to_the_input_is_refused(work):
    os.symlink(work / "data.npy", work / "link.npy")
    with pytest.raises(QfabError, match="is the input"):
        flow.output_file("link.npy", inputs=("data.npy",))


def test_interrupted_write_keeps_the_old_file(work):
    (work / "y.npy").write_bytes(b"old")

    def broken(f):
        f.write(b"half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        flow.write_output(work / "y.npy", broken)
    assert (work / "y.npy").read_bytes() == b"old"
    assert sorted(p.name for p in work.iterdir()) == ["data.npy", "m.qfab", "y.npy"]


@pytest.mark.parametrize("argv, message", [
    (["run", "--board", "icebreaker", "--baud", "0", "--input", "data.npy", "-o", "y.npy"], "--baud"),
    (["run", "--board", "icebreaker", "--baud", "-9600", "--input", "data.npy", "-o", "y.npy"], "--baud"),
    (["bitstream", "build", "--board", "icebreaker", "--baud", "0"], "--baud"),
    (["bitstream", "build", "--board", "icebreaker", "--freq", "0"], "--freq"),
    (["run", "--board", "icebreaker", "--timeout", "-1", "--input", "data.npy", "-o", "y.npy"], "--timeout"),
    (["compile", "m.qfab", "-o", "b", "--target-ii", "0"], "--target-ii"),
    (["simulate", "b", "--input", "data.npy", "-o", "y.npy", "--stall", "1.0"], "--stall"),
])
def test_bad_option_values_are_usage_errors(work, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "must be" in err


def test_run_refuses_an_empty_input(work, capsys):
    from qfab.compiler.compile import compile_graph
    from qfab.compiler.modelfile import load
    compile_graph(load(work / "m.qfab"), work / "build", target_ii=64, log=lambda m: None)
    np.save(work / "empty.npy", np.zeros((0, 12), np.int64))
    assert main(["run", "build", "--board", "icebreaker", "--sim", "--input", "empty.npy", "-o", "y.npy"]) == 1
    assert "empty" in capsys.readouterr().err
    assert not (work / "y.npy").exists()
    assert main(["simulate", "build", "--input", "data.npy", "-o", "y.npy", "--trace", "t.txt"]) == 1
    assert ".fst or .vcd" in capsys.readouterr().err
    assert main(["simulate", "build", "--input", "data.npy", "-o", "build/model.qfab"]) == 1
    assert "is the input" in capsys.readouterr().err
