"""The path of a new user from the README to a board (issue 15): version, help that names the
boards and the real defaults, the demo's data and next steps, warnings on inputs in the wrong
scale, which boards a build fits, and advice that names the exact flag or command."""

import pathlib
import re
import shlex

import numpy as np
import pytest

from qfab.cli import demo_next_steps, main
from qfab.compiler.datasets import digits

ROOT = pathlib.Path(__file__).resolve().parents[1]
MLP = str(ROOT / "compiler" / "data" / "digits_mlp.onnx")


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits")
    x_train, _, x_test, _ = digits("flat")
    np.save(d / "calib.npy", x_train)
    np.save(d / "x.npy", x_test)
    np.save(d / "raw.npy", x_test * 16)            # raw 0-16 pixels: the wrong scale
    return d


@pytest.fixture(scope="module")
def build64(digits_files, tmp_path_factory):
    """The demo's build: the w4a4 MLP at 64 cycles per inference (too large for an iCE40)."""
    out = tmp_path_factory.mktemp("b") / "build"
    assert main(["compile", MLP, "--calib", str(digits_files / "calib.npy"), "--wbits", "4", "--abits", "4",
                 "--target-ii", "64", "-o", str(out)]) == 0
    return out


def test_version(capsys):
    from importlib.metadata import version
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"qfab {version('qfab')}"


@pytest.mark.parametrize("command", ["compile", "bitstream", "deploy", "run", "build"])
def test_board_help_lists_the_boards(capsys, command):
    from qfab.boards.registry import BOARDS
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ", ".join(BOARDS) in text


def test_bitstream_help_states_the_real_baud_default(capsys):
    from qfab.boards.bitstream import DEFAULT_BAUD
    with pytest.raises(SystemExit):
        main(["bitstream", "--help"])
    text = capsys.readouterr().out
    assert f"(default {DEFAULT_BAUD})" in text and DEFAULT_BAUD == 115200 and "1000000" not in text


def test_inputs_in_the_wrong_scale_are_warned_about_once_with_counts(digits_files, tmp_path, capsys):
    args = ["reference", MLP, "--calib", str(digits_files / "calib.npy"), "--wbits", "4", "--abits", "4"]
    assert main(args + ["--input", str(digits_files / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(args + ["--input", str(digits_files / "raw.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    err = capsys.readouterr().err
    raw = np.load(digits_files / "raw.npy")
    clipped = int((raw > 1 + 1 / 30).sum())           # the u4 input covers [0, 1] in steps of 1/15
    assert err.count("warning") == 1
    assert f"{clipped:,} of {raw.size:,} input elements" in err and "[0, 1]" in err


def test_compile_says_which_boards_a_build_fits(build64, capsys):
    assert main(["info", str(build64)]) == 0            # a build folder: its model
    text = capsys.readouterr().out
    assert "gemm_3" in text and "Dense" in text and "model.qfab" in text
    from qfab.cli_common import boards_fitting
    from qfab.compiler.buildfolder import Build
    fits = boards_fitting(Build.load(build64).manifest)
    assert not fits["icebreaker"][0] and fits["ulx3s_85f"][0]


def test_bitstream_refuses_a_build_that_cannot_fit_and_names_the_fold_command(build64, capsys):
    assert main(["bitstream", str(build64), "--board", "icebreaker"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "logic cells" in err and "--force" in err
    assert f"qfab compile {build64}/model.qfab --board icebreaker -o {build64}_icebreaker" in err


def test_w8a8_fits_the_icebreaker_folded_for_it_and_bitstream_names_the_refold(digits_files, tmp_path, capsys):
    # 8-bit MLP: fits the iCEBreaker fully folded, its requantization in logic (the UP5K has 8 DSPs)
    assert main(["compile", MLP, "--calib", str(digits_files / "calib.npy"), "--board", "icebreaker",
                 "-o", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "DSPs 0;" in out and "this build fits: icebreaker" in out
    # folded for 64 cycles it does not; bitstream refuses it and says how to fold it for the board
    assert main(["compile", MLP, "--calib", str(digits_files / "calib.npy"), "--target-ii", "64",
                 "-o", str(tmp_path / "b8")]) == 0
    assert "fits: ulx3s_85f, orangecrab" in capsys.readouterr().out
    assert main(["bitstream", str(tmp_path / "b8"), "--board", "icebreaker"]) == 1
    err = capsys.readouterr().err
    assert "does not fit the icebreaker" in err and "to fold it for the icebreaker: qfab compile" in err


def test_deploy_without_a_programmer_prints_the_command_and_exits_0(tmp_path, monkeypatch, capsys):
    (tmp_path / "b" / "bitstream" / "icebreaker").mkdir(parents=True)
    (tmp_path / "b" / "bitstream" / "icebreaker" / "top.bin").write_bytes(b"\0")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert main(["deploy", str(tmp_path / "b"), "--board", "icebreaker"]) == 0
    out = capsys.readouterr().out
    assert "no programmer on PATH" in out and "top.bin" in out


def test_run_without_build_says_which_build_it_picked(build64, tmp_path, monkeypatch, capsys):
    import json
    monkeypatch.setenv("QFAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "boards").mkdir(parents=True)
    (tmp_path / "cache" / "boards" / "icebreaker.json").write_text(json.dumps({"build": str(build64)}))
    np.save(tmp_path / "empty.npy", np.zeros((0, 64), np.float32))
    assert main(["run", "--board", "icebreaker", "--sim", "--input", str(tmp_path / "empty.npy"),
                 "-o", str(tmp_path / "y.npy")]) == 1
    out = capsys.readouterr().out
    assert f"no BUILD given: running {build64}, the last build qfab bitstream made for the icebreaker" in out


def _readme_next_steps():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Next steps", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_next_steps_are_what_the_demo_prints():
    printed = [line.split("(")[0].strip() for line in demo_next_steps(pathlib.Path("out"), 4)[1:]]
    assert _readme_next_steps() == printed
    for command in printed:
        assert "out/test_inputs.npy" in command or "--board" in command


@pytest.mark.verilator
@pytest.mark.slow
def test_walk_the_readme_from_a_fresh_folder(tmp_path, monkeypatch, capsys):
    """The quick start's demo, then the README's next steps, with only the files they name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QFAB_CACHE", str(tmp_path / "cache"))
    assert main(["demo"]) == 0
    x_test, y_test = digits("flat")[2:]
    assert np.array_equal(np.load("out/test_inputs.npy"), x_test)
    assert np.array_equal(np.load("out/test_labels.npy"), y_test)
    for command in _readme_next_steps():
        argv = shlex.split(command)
        assert argv[0] == "qfab"
        if argv[1] == "bitstream":           # a bitstream takes minutes: the refusal check is enough here
            continue
        assert main(argv[1:]) == 0, command
    labels = np.load("out/test_labels.npy")
    for name in ("y_reference.npy", "y_simulated.npy", "y_board.npy"):
        assert (np.load(f"out/{name}").argmax(1) == labels).mean() > 0.97
    assert re.search(r"fits: .*icebreaker", capsys.readouterr().out)


def test_info_explains_layout_and_multiplier_width():
    """No unexplained "(NHWC at the boundary)" for a vector input; images say how they are laid out."""
    from importlib.resources import files

    from qfab.compiler.datasets import digits
    from qfab.compiler.info import format_table
    from qfab.compiler.load import load_graph
    from qfab.compiler.ptq import QuantConfig
    data = files("qfab.compiler") / "data"
    mlp = format_table(load_graph(str(data / "digits_mlp.onnx"), digits("flat")[0][:64], QuantConfig()))
    assert "boundary" not in mlp and "NCHW" not in mlp and "NHWC" not in mlp
    assert "requantization multipliers of 24 bits" in mlp
    cnn = format_table(load_graph(str(data / "digits_cnn.onnx"), digits("NCHW")[0][:64], QuantConfig()))
    assert "NCHW in the model, channels-last (H, W, C) inside qfab" in cnn


def test_verilator_version_reads_as_a_release():
    import importlib.metadata

    from qfab.sim.verilator import _shown_version
    shown = _shown_version("Verilator vUNKNOWN-built20260516-4e853d8")
    assert "UNKNOWN" not in shown and importlib.metadata.version("verilator") in shown
