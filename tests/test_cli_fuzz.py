"""The qfab command under random command lines: subcommands with random flags and values, missing
and extra arguments, paths to missing, empty, garbage, truncated and mutated files (.npy, .qfab,
.onnx, folding and config files, build folders with broken manifests), all in a scratch folder.

Every run must end in exit code 0, 1 (a one-line error) or 2 (a usage error) -- never a traceback
-- and write nothing but the paths named as outputs. The long tools (Verilator, the FPGA
toolchain, training, the demo's quantization; compile in the fast loop) are replaced by stand-ins
that fail at once, so the fuzz covers everything the command checks before them.
"""

import hashlib
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from qfab.base.errors import QfabError
from qfab.cli import main
from qfab.compiler.modelfile import save

from .compiler.graphs import dense_graph, random_codes

FILES = ["tiny.qfab", "m.onnx", "x.npy", "codes.npy", "calib.npy", "empty.npy", "scalar.npy", "nan.npy",
         "garbage.npy", "trunc.npy", "text.txt", "empty_file", "trunc.qfab", "flip.qfab", "garbage.qfab",
         "trunc.onnx", "flip.onnx", "fold_pe0.json", "fold_list.json", "fold_null.json", "fold_str.json",
         "fold_ok.json", "cfg_bad.json", "cfg.toml", "build", "build_noinput", "build_badhash", "build_escape",
         "build_garbage", "dir", "missing.npy", "nodir/x.npy"]
OUTPUTS = ["out.npy", "out", "dir", "nodir/out.npy", "x.npy", "tiny.qfab", "build", "newbuild", "p.png", "p.xyz",
           "p", "t.fst", "t.vcd", "build/model.qfab", "m.onnx", "o.qfab", "o.onnx"]
VALUES = ["0", "1", "-1", "4", "8", "9", "2.5", "1e309", "nan", "inf", "-inf", "abc", "", "64", "0.5",
          "999999999999999999999", "40%", "3kB", "icebreaker", "nosuchboard", "bit_serial", "mse", "mlp", "-o"]
OUT_FLAGS = {"-o", "--output", "--out", "--plot", "--trace", "--qdq"}

POOLS = {
    "model": ["tiny.qfab", "m.onnx", "trunc.qfab", "flip.qfab", "garbage.qfab", "trunc.onnx", "flip.onnx",
              "missing.qfab", "dir", "text.txt", "build/model.qfab", "build"],
    "npy": ["x.npy", "codes.npy", "calib.npy", "empty.npy", "scalar.npy", "nan.npy", "garbage.npy", "trunc.npy",
            "missing.npy", "empty_file", "dir", "nodir/x.npy", "tiny.qfab"],
    "build": ["build", "build_noinput", "build_badhash", "build_escape", "build_garbage", "dir", "missing",
              "x.npy"],
    "json": ["fold_pe0.json", "fold_list.json", "fold_null.json", "fold_str.json", "fold_ok.json", "cfg_bad.json",
             "cfg.toml", "missing.json", "garbage.npy", "empty_file", "dir"],
    "board": ["icebreaker", "ulx3s_85f", "nosuch", ""],
    "port": ["missing_port", "text.txt", "dir"],
    "int": ["0", "1", "-1", "4", "8", "9", "64", "2.5", "abc", "", "999999999999999999999"],
    "float": ["0", "0.5", "1", "-1", "nan", "inf", "1e309", "abc", "0.99", "12"],
    "out": OUTPUTS,
    "value": VALUES,
}
QUANT = {"--calib": "npy", "--wbits": "int", "--abits": "int", "--config": "json", "--calib-method": "value",
         "--mixed-budget": "value", "--multipoint": "float"}
COMMANDS = {     # positional kinds, {flag: kind of value (None: a switch)}, required flags
    "quantize": (["model"], {**QUANT, "-o": "out"}, ["-o"]),
    "reference": (["model"], {**QUANT, "--input": "npy", "-o": "out", "--int": None}, ["--input", "-o"]),
    "info": (["model"], QUANT, []),
    "compile": (["model"], {**QUANT, "-o": "out", "--target-ii": "int", "--board": "board", "--folding": "json",
                            "--style": "value", "--plot": "out"}, ["-o"]),
    "simulate": (["build"], {"--input": "npy", "-o": "out", "--int": None, "--stall": "float", "--seed": "int",
                             "--plot": "out", "--trace": "out"}, ["--input", "-o"]),
    "train": ([], {"--model": "value", "--wbits": "int", "--abits": "int", "--sparsity": "float",
                   "--epochs": "int", "--seed": "int", "-o": "out", "--qdq": "out"}, ["-o"]),
    "demo": ([], {"--out": "out", "--bits": "int", "--target-ii": "int"}, []),
    "boards": ([], {}, []),
    "bitstream": (["build"], {"--board": "board", "--freq": "float", "--baud": "int"}, ["--board"]),
    "deploy": (["build"], {"--board": "board", "--dry-run": None}, ["--board"]),
    "run": (["build"], {"--board": "board", "--port": "port", "--baud": "int", "--timeout": "float",
                        "--input": "npy", "-o": "out", "--int": None, "--check": None, "--sim": None,
                        "--sim-divisor": "int"}, ["--board", "--input", "-o"]),
    "build": (["model"], {**QUANT, "--board": "board", "-o": "out", "--freq": "float", "--baud": "int",
                          "--style": "value"}, ["--board", "-o"]),
    "report": (["build"], {}, []),      # --open left out: it would start a web browser
}
ALL_FLAGS = sorted({f for _, flags, _ in COMMANDS.values() for f in flags} | {"--help", "--nosuch"})


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The scratch folder every example starts from (copied afresh for each)."""
    from qfab.cli_common import bundled
    from qfab.compiler.compile import compile_graph
    d = tmp_path_factory.mktemp("fuzzbase")
    g = dense_graph(k=12, n=5)
    save(g, d / "tiny.qfab")
    shutil.copy(bundled("digits_mlp.onnx"), d / "m.onnx")
    codes = random_codes(g, 4)[g.inputs[0]]
    q = g.tensors[g.inputs[0]].qtype
    np.save(d / "x.npy", ((codes - q.zero_point) * q.scale).astype(np.float32))
    np.save(d / "codes.npy", codes.astype(np.int64))
    np.save(d / "calib.npy", np.random.default_rng(0).random((20, 64), dtype=np.float32))
    np.save(d / "empty.npy", np.zeros((0, 12), np.float32))
    np.save(d / "scalar.npy", np.float32(1.0))
    np.save(d / "nan.npy", np.full((2, 12), np.nan, np.float32))
    rng = np.random.default_rng(1)
    (d / "garbage.npy").write_bytes(rng.bytes(300))
    (d / "trunc.npy").write_bytes((d / "x.npy").read_bytes()[:150])
    (d / "text.txt").write_text("hello\n")
    (d / "empty_file").write_bytes(b"")
    for name in ("tiny.qfab", "m.onnx"):
        data = (d / name).read_bytes()
        stem, ext = name.split(".")
        (d / f"trunc.{ext}").write_bytes(data[:len(data) // 2])
        flipped = bytearray(data)
        for k in rng.integers(0, len(data), 20):
            flipped[k] ^= 0xFF
        (d / f"flip.{ext}").write_bytes(bytes(flipped))
    (d / "garbage.qfab").write_bytes(rng.bytes(500))
    (d / "fold_pe0.json").write_text(json.dumps({"fc": {"pe": 0}}))
    (d / "fold_list.json").write_text("[]")
    (d / "fold_null.json").write_text("null")
    (d / "fold_str.json").write_text(json.dumps({"fc": {"pe": "a", "simd": 2.5}}))
    (d / "fold_ok.json").write_text(json.dumps({"fc": {"pe": 1, "simd": 1}}))
    (d / "cfg_bad.json").write_text(json.dumps({"w_bits": 9, "calib_method": 3}))
    (d / "cfg.toml").write_text("w_bits = [\n")
    compile_graph(g, d / "build", target_ii=64, log=lambda m: None)
    manifest = json.loads((d / "build" / "manifest.json").read_text())
    for name, change in [("build_noinput", lambda m: m.pop("input")),
                         ("build_escape", lambda m: m["files"].update(model="../../etc/passwd"))]:
        shutil.copytree(d / "build", d / name)
        m = json.loads(json.dumps(manifest))
        try:
            change(m)
        except (KeyError, AttributeError, TypeError):
            pass
        (d / name / "manifest.json").write_text(json.dumps(m))
    shutil.copytree(d / "build", d / "build_badhash")
    with open(d / "build_badhash" / "qfab_top.v", "a") as f:
        f.write("// changed\n")
    shutil.copytree(d / "build", d / "build_garbage")
    (d / "build_garbage" / "manifest.json").write_text('{"format": "qfab-build", "vers')
    (d / "dir").mkdir()
    return d


def _stub(*args, **kwargs):
    raise QfabError("fuzz stand-in: the long tool is not run")


@pytest.fixture
def stubs(monkeypatch):
    import qfab.boards.bitstream
    import qfab.boards.link_sim
    import qfab.compiler.ptq
    import qfab.sim.accelerator
    monkeypatch.setattr(qfab.sim.accelerator, "run_stream", _stub)
    monkeypatch.setattr(qfab.boards.link_sim, "simulate_link", _stub)
    monkeypatch.setattr(qfab.boards.bitstream, "build_bitstream", _stub)
    monkeypatch.setattr(qfab.compiler.ptq, "quantize", _stub)      # the demo's four models
    try:
        import qfab.compiler.train
        monkeypatch.setattr(qfab.compiler.train, "train_qat", _stub)
    except ImportError:
        pass
    monkeypatch.setenv("QFAB_CACHE", tempfile.mkdtemp(prefix="qfab_fuzz_cache_"))
    return monkeypatch


@st.composite
def command_lines(draw):
    """Mostly well-formed command lines (the required arguments, values of the right kind, drawn
    from good and broken files); some chaotic ones (any flag, any value, missing or extra)."""
    command = draw(st.sampled_from(sorted(COMMANDS)))
    positionals, flags, required = COMMANDS[command]
    chaotic = draw(st.integers(0, 4)) == 0
    anything = FILES + OUTPUTS + VALUES

    def value(kind):
        return draw(st.sampled_from(anything if chaotic and draw(st.booleans()) else POOLS[kind]))
    argv = [command]
    for kind in positionals:
        if not chaotic or draw(st.integers(0, 5)):
            argv.append(value(kind))
    chosen = [f for f in required if not chaotic or draw(st.integers(0, 5))]
    optional = sorted(set(flags) - set(required))
    if optional:
        chosen += draw(st.lists(st.sampled_from(optional), max_size=4, unique=True))
    if chaotic:
        chosen += draw(st.lists(st.sampled_from(ALL_FLAGS), max_size=2))
    for flag in draw(st.permutations(chosen)):
        if flag == "--help" and draw(st.integers(0, 3)):
            continue
        argv.append(flag)
        kind = flags.get(flag, "value")
        if kind is not None and (not chaotic or draw(st.integers(0, 5))):
            argv.append(value(kind))
    if chaotic and draw(st.integers(0, 3)) == 0:
        argv.append(draw(st.sampled_from(FILES + VALUES)))      # an extra argument
    return argv


def _snapshot(root):
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        state[rel] = "dir"
        for name in filenames:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                state[os.path.normpath(os.path.join(rel, name))] = hashlib.sha256(f.read()).hexdigest()
    return state


def _named_outputs(argv):
    outs = [argv[k + 1] for k, a in enumerate(argv[:-1]) if a in OUT_FLAGS]
    if argv[0] == "demo" and "--out" not in argv:
        outs.append("out")
    if argv[0] in ("report", "simulate", "bitstream") and len(argv) > 1 and not argv[1].startswith("-"):
        # steps on a build folder keep their results in it: its report page and reports/*.json
        outs += [os.path.join(argv[1], "report.html"), os.path.join(argv[1], "reports")]
    return [os.path.normpath(o) for o in outs if o]


def _check(base, argv, capsys):
    work = pathlib.Path(tempfile.mkdtemp(prefix="qfab_fuzz_"))
    try:
        shutil.copytree(base, work, dirs_exist_ok=True)
        before = _snapshot(work)
        cwd = os.getcwd()
        os.chdir(work)
        try:
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
        finally:
            os.chdir(cwd)
        err = capsys.readouterr().err
        assert code in (0, 1, 2), f"{argv}: exit code {code!r}"
        assert "Traceback" not in err, f"{argv}: {err}"
        if code == 1:
            assert err.startswith("error: "), f"{argv}: {err}"
        after = _snapshot(work)
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        allowed = _named_outputs(argv)
        stray = sorted(k for k in changed
                       if not any(k == o or k.startswith(o + os.sep) for o in allowed))
        assert not stray, f"{argv} wrote files it was not told to: {stray}"
    finally:
        shutil.rmtree(work, ignore_errors=True)


FUZZ = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])


@settings(max_examples=60, **FUZZ)
@given(argv=command_lines())
def test_cli_fuzz(base, stubs, capsys, argv):
    import qfab.compiler.compile
    stubs.setattr(qfab.compiler.compile, "compile_graph", _stub)     # several seconds each: slow loop only
    _check(base, argv, capsys)


@pytest.mark.slow
@settings(max_examples=400, **FUZZ)
@given(argv=command_lines())
def test_cli_fuzz_long(base, stubs, capsys, argv):
    _check(base, argv, capsys)


@pytest.mark.parametrize("argv", [
    ["reference", "tiny.qfab", "--input", "x.npy", "-o", "x"],
    ["reference", "tiny.qfab", "--input", "x.npy", "-o", "out"],
    ["reference", "tiny.qfab", "--input", "codes.npy", "-o", "dir"],
    ["quantize", "tiny.qfab", "-o", "tiny.qfab"],
    ["compile", "tiny.qfab", "-o", "nodir/build"],
    ["simulate", "build", "--input", "x.npy", "-o", "build/model.qfab"],
    ["run", "build", "--board", "icebreaker", "--baud", "0", "--input", "x.npy", "-o", "y.npy"],
    ["run", "build", "--board", "icebreaker", "--sim", "--input", "empty.npy", "-o", "y.npy"],
    ["simulate", "build", "--input", "x.npy", "-o", "y.npy", "--trace", "t.txt"],
    ["simulate", "build", "--input", "x.npy", "-o", "y.npy", "--plot", "nodir/p.png"],
])
def test_cases_from_the_audit(base, stubs, capsys, argv):
    _check(base, argv, capsys)
