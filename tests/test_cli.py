"""The qfab command, run in-process: the quick-start path and its error messages."""

import json

import numpy as np
import pytest

from qfab.cli import main
from qfab.compiler import reference
from qfab.compiler.datasets import digits
from qfab.compiler.modelfile import load


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    x_train, y_train, x_test, y_test = digits("NCHW")
    np.save(d / "calib.npy", x_train)
    np.save(d / "test.npy", x_test)
    np.save(d / "labels.npy", y_test)
    return d


def test_quantize_reference_info_round_trip(data, tmp_path, capsys):
    out = tmp_path / "cnn.qfab"
    assert main(["quantize", _bundled("digits_cnn.onnx"), "--calib", str(data / "calib.npy"),
                 "--wbits", "4", "--abits", "4", "--calib-method", "mse", "-o", str(out)]) == 0
    graph = load(out)
    assert all(n.w_type.bits == 4 for n in graph.nodes if hasattr(n, "w_type"))
    assert main(["reference", str(out), "--input", str(data / "test.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    assert main(["reference", str(out), "--input", str(data / "test.npy"), "-o", str(tmp_path / "yi.npy"),
                 "--int"]) == 0
    y, yi = np.load(tmp_path / "y.npy"), np.load(tmp_path / "yi.npy")
    q = graph.tensors[graph.outputs[0]].qtype
    assert yi.dtype == np.int64 and y.shape == yi.shape == (360, 10)
    np.testing.assert_allclose(y, (yi - q.zero_point) * q.scale, rtol=1e-6)
    expected = reference.run(graph, reference.quantize_inputs(graph, np.load(data / "test.npy")))[graph.outputs[0]]
    assert np.array_equal(yi, expected)
    assert (y.argmax(1) == np.load(data / "labels.npy")).mean() > 0.95
    # integer codes as input give the same result as the floats they came from
    codes = reference.output_codes(graph, reference.quantize_inputs(graph, np.load(data / "test.npy")))
    assert codes.shape == (360, 1, 8, 8)          # back in the model's NCHW layout
    np.save(tmp_path / "codes.npy", codes)
    assert main(["reference", str(out), "--input", str(tmp_path / "codes.npy"), "-o", str(tmp_path / "yc.npy"),
                 "--int"]) == 0
    assert np.array_equal(np.load(tmp_path / "yc.npy"), yi)
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Conv2d" in text and "MACs" in text and "total" in text and "23680" in text


def test_reference_straight_from_float_onnx(data, tmp_path):
    # NCHW images are the wrong calibration data for the MLP: refused, not misread
    assert main(["reference", _bundled("digits_mlp.onnx"), "--calib", str(data / "calib.npy"),
                 "--input", str(data / "test.npy"), "-o", str(tmp_path / "y.npy")]) == 1
    x_train, _, x_test, _ = digits("flat")
    np.save(tmp_path / "c.npy", x_train)
    np.save(tmp_path / "t.npy", x_test)
    assert main(["reference", _bundled("digits_mlp.onnx"), "--calib", str(tmp_path / "c.npy"),
                 "--input", str(tmp_path / "t.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    assert np.load(tmp_path / "y.npy").shape == (360, 10)


@pytest.mark.parametrize("argv,phrase", [
    (["quantize", "MODEL", "-o", "x.qfab"], "is a float model: give calibration data"),
    (["quantize", "MODEL", "--calib", "CALIB", "--wbits", "0", "-o", "x.qfab"], "w_bits must be an integer from 1 to 8"),
    (["quantize", "MODEL", "--calib", "nothing.npy", "-o", "x.qfab"], "no such file"),
    (["info", "nothing.qfab"], "not a qfab model file"),
    (["info", "model.txt"], "expected a .onnx or .qfab file"),
])
def test_errors_are_one_line(data, tmp_path, capsys, argv, phrase):
    argv = [a.replace("MODEL", _bundled("digits_cnn.onnx")).replace("CALIB", str(data / "calib.npy")) for a in argv]
    argv = [str(tmp_path / a) if a in ("x.qfab", "nothing.npy", "nothing.qfab", "model.txt") else a for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err and err.startswith("error: ")


def test_pickled_input_is_refused(tmp_path, capsys):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["reference", _bundled("digits_mlp.onnx"), "--calib", str(tmp_path / "obj.npy"),
                 "--input", str(tmp_path / "obj.npy"), "-o", str(tmp_path / "y.npy")]) == 1
    assert "without pickle" in capsys.readouterr().err


@pytest.mark.verilator
@pytest.mark.slow
def test_demo_quantizes_compiles_and_simulates(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "w8a8" in text and "w4a4" in text
    assert "bit-exact: every one of the 3600 outputs equals the reference" in text
    assert "(bound 64, ratio 1.000)" in text
    graph = load(tmp_path / "digits_mlp_w4a4.qfab")
    assert graph.nodes[0].w_type.bits == 4
    assert "module qfab_top" in (tmp_path / "build" / "qfab_top.v").read_text()


def test_train_writes_a_pruned_model_and_qdq(tmp_path, capsys):
    pytest.importorskip("torch", reason="needs the [train] extra: pip install -e '.[train]'")
    assert main(["train", "--epochs", "2", "--sparsity", "0.5", "-o", str(tmp_path / "t.qfab"),
                 "--qdq", str(tmp_path / "t.onnx")]) == 0
    text = capsys.readouterr().out
    assert "ratio vs fp32" in text and "total" in text
    graph = load(tmp_path / "t.qfab")
    weights = np.concatenate([n.weights.ravel() for n in graph.nodes if hasattr(n, "weights")])
    assert (weights == 0).mean() >= 0.45
    from qfab.compiler.load import load_graph
    again = load_graph(tmp_path / "t.onnx")
    x = digits("flat")[2]
    a = reference.run(graph, reference.quantize_inputs(graph, x))[graph.outputs[0]]
    b = reference.run(again, reference.quantize_inputs(again, x))[again.outputs[0]]
    assert np.array_equal(a, b)


def test_compile_for_a_board_with_a_plot(data, tmp_path, capsys):
    plot = tmp_path / "build.png"
    assert main(["compile", _bundled("digits_cnn.onnx"), "--calib", str(data / "calib.npy"), "--wbits", "4",
                 "--abits", "4", "--board", "icebreaker", "-o", str(tmp_path / "b"), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    from qfab.boards.registry import budget_for
    budget = budget_for("icebreaker")
    assert (f"board icebreaker: the accelerator may use {budget.logic_cells} logic cells, {budget.luts} LUTs"
            in text)
    assert "by the estimate, this build fits: icebreaker" in text
    assert "total (with streams)" in text and "iCE40 logic cells" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 20000


@pytest.mark.verilator
def test_compile_then_simulate_saves_the_results_in_the_build(tmp_path, capsys):
    x_train, _, x_test, _ = digits("flat")
    np.save(tmp_path / "calib.npy", x_train)
    np.save(tmp_path / "x.npy", x_test[:30])
    build = tmp_path / "b"
    assert main(["compile", _bundled("digits_mlp.onnx"), "--calib", str(tmp_path / "calib.npy"), "--wbits", "4",
                 "--abits", "4", "--calib-method", "mse", "--target-ii", "64", "-o", str(build)]) == 0
    assert main(["simulate", str(build), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"),
                 "--int"]) == 0
    text = capsys.readouterr().out
    assert "bit-exact: all 300 output elements equal the reference" in text and "simulation.json" in text
    report = json.loads((build / "reports" / "simulation.json").read_text())
    assert report["verdict"] == "bit-exact" and report["inferences"] == 30 and report["bound"] == 64
    graph = load(build / "model.qfab")
    want = reference.run(graph, reference.quantize_inputs(graph, x_test[:30]))[graph.outputs[0]]
    assert np.array_equal(np.load(tmp_path / "y.npy"), want)
    assert report["gap_cycles"] == report["hold_cycles"] == 0        # no --stall: nothing injected
    # with --stall the run says how many gaps and stalls it injected, and stays bit-exact
    assert main(["simulate", str(build), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y2.npy"),
                 "--int", "--stall", "0.3", "--seed", "5"]) == 0
    text = capsys.readouterr().out
    report = json.loads((build / "reports" / "simulation.json").read_text())
    assert report["gap_cycles"] > 0 and report["hold_cycles"] > 0
    assert (f"input gaps held back a beat in {report['gap_cycles']} cycles, output stalls held back a valid beat "
            f"in {report['hold_cycles']} cycles") in text
    assert np.array_equal(np.load(tmp_path / "y2.npy"), want)
    # a build folder edited after qfab compile is refused, in one line
    (build / "qfab_top.v").write_text("module qfab_top(); endmodule\n")
    assert main(["simulate", str(build), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 1
    err = capsys.readouterr().err
    assert "qfab_top.v differs" in err and err.startswith("error: ") and "Traceback" not in err
    assert main(["simulate", str(tmp_path / "nothing"), "--input", str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "y.npy")]) == 1
    assert "not a qfab build folder" in capsys.readouterr().err
