"""The build report (report.html): written by each flow step, every section present, what is
missing said in one line, self-contained; rendered in headless Chromium (Debian's package) without
console errors, with a screenshot."""

import json
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest

from qfab import flow
from qfab.cli import main
from qfab.compiler.buildfolder import Build
from qfab.compiler.datasets import digits
from qfab.page import Html, Section, render_page, table
from qfab.report import REPORT, build_report, record_accuracy, step_done

CHROMIUM = "/usr/bin/chromium"
PNG = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("model", "folding", "resources", "timing", "simulation", "accuracy", "commands")
DATA = pathlib.Path(__file__).parent / "data"
DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason="Debian's chromium is not installed (/usr/bin/chromium): the report is "
                                           "checked in a real browser; apt-get install -y chromium")


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


def _compile(folder, target_ii=1024):
    x_train, _, x_test, _ = digits("flat")
    q = flow.quantize(_bundled("digits_mlp.onnx"), x_train, flow.quant_config(w_bits=4, a_bits=4), log=lambda m: None)
    lines = []
    c = flow.compile(q.graph, folder, target_ii=target_ii, log=lines.append)
    return c, x_test, lines


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("report") / "build")


def _sections(html):
    return re.findall(r'<section id="([\w-]+)">', html)


def _section(html, key):
    return html.split(f'<section id="{key}">', 1)[1].split("</section>", 1)[0]


def _external(html):
    """References the page would load from elsewhere (it must have none)."""
    return re.findall(r'(?:src|href)="(?!data:|#)[^"]*"|url\((?!data:)', html)


def render(page, out, height=4200):
    """Load ``page`` in headless Chromium: its DOM, the console messages it logged and a
    screenshot at ``out``."""
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
              "--disable-extensions", "--disable-background-networking", f"--user-data-dir={out.parent / 'chromium'}",
              "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run(common + ["--dump-dom", page.absolute().as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    shot = subprocess.run(common + [f"--window-size=1280,{height}", f"--screenshot={out}", page.absolute().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and out.is_file(), shot.stderr[-2000:]
    return dom.stdout, console


# -- the page machinery ---------------------------------------------------------------------------

def test_render_page_escapes_text_and_keeps_the_order():
    page = render_page("a <b> & c", [Section("one", "First", table(["x", "<y>"], [(1, Html("<i>ok</i>"))])),
                                     Section("two", "Second", "")])
    assert _sections(page) == ["one", "two"]
    assert "<title>a &lt;b&gt; &amp; c</title>" in page and "<th>&lt;y&gt;</th>" in page and "<i>ok</i>" in page
    assert "<script" not in page and not _external(page)
    with pytest.raises(ValueError, match="distinct"):
        render_page("t", [Section("a", "A", ""), Section("a", "B", "")])
    with pytest.raises(ValueError, match="section key"):
        Section("a b", "A", "")


# -- the compile plot -----------------------------------------------------------------------------

def test_compile_plot_titles_legends_and_budget(compiled):
    """Both titles inside the figure and apart, no legend on the bars, the resource axis labelled,
    the board's budget drawn as lines."""
    from qfab.compiler.compile import Budget
    from qfab.compiler.plots import build_figure
    c, _, _ = compiled
    t = c.manifest.estimates.total
    budget = Budget(luts=2 * t.luts, ffs=3 * t.ffs, dsps=8, bram_bits=2 * t.bram_bits, logic_cells=t.logic_cells + 7)
    fig = build_figure(c.manifest, budget)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax_c, ax_r = fig.axes
    titles = [ax.title.get_window_extent(renderer) for ax in (ax_c, ax_r)]
    width = fig.bbox.width
    assert all(0 <= t.x0 and t.x1 <= width for t in titles) and titles[0].x1 < titles[1].x0
    for ax in (ax_c, ax_r):
        legend = ax.get_legend().get_window_extent(renderer)
        assert not any(legend.overlaps(p.get_window_extent(renderer)) for p in ax.patches)
    assert ax_r.get_ylabel().startswith("estimated count")
    lines = {round(line.get_ydata()[0]) for line in ax_r.lines}
    assert lines == {budget.luts, budget.ffs, budget.logic_cells}
    assert len(build_figure(c.manifest).axes[1].lines) == 0
    far = build_figure(c.manifest, Budget(luts=100 * t.luts, ffs=100 * t.ffs, logic_cells=100 * t.logic_cells))
    assert len(far.axes[1].lines) == 0 and f"{100 * t.luts} LUTs" in far.axes[1].get_title()


# -- a compiled build ----------------------------------------------------------------------------

def test_compile_writes_the_report_and_says_what_is_missing(compiled):
    c, _, lines = compiled
    folder = c.build.folder
    page = (folder / REPORT).read_text()
    assert f"report: {folder / REPORT}" in lines
    assert _sections(page) == list(SECTIONS)
    assert not _external(page)
    from qfab.compiler.info import layer_table
    for row in layer_table(c.build.load_model()):
        assert f"<td>{row.name}</td>" in _section(page, "model")
    folding = _section(page, "folding")
    for stage in c.manifest.stages:
        assert f"<td>{stage.name}</td>" in folding
    assert "data:image/png;base64," in folding
    assert f"<td class=num>{c.manifest.estimates.total.luts:,}</td>" in _section(page, "resources")
    assert f"not simulated yet: qfab simulate {folder}" in _section(page, "simulation")
    assert f"no bitstream yet: qfab bitstream {folder}" in _section(page, "timing")
    assert "accuracy not recorded" in _section(page, "accuracy")
    log = c.build.read_report("commands")["commands"]
    assert [e["step"] for e in log] == ["compile"] and log[0]["details"] == {"target_ii": 1024,
                                                                              "style": "bit_parallel"}


def test_a_report_failure_never_fails_the_step(compiled, monkeypatch):
    c, _, _ = compiled
    import qfab.report

    def broken(folder):
        raise RuntimeError("disk full")
    monkeypatch.setattr(qfab.report, "build_report", broken)
    lines = []
    assert step_done(c.build, "simulate", log=lines.append) is None
    assert lines == [f"warning: {c.build.folder / REPORT} not updated (RuntimeError: disk full)"]


def test_report_command(compiled, capsys):
    c, _, _ = compiled
    (c.build.folder / REPORT).unlink()
    assert main(["report", str(c.build.folder)]) == 0
    assert capsys.readouterr().out.strip() == str(c.build.folder / REPORT)
    assert _sections((c.build.folder / REPORT).read_text()) == list(SECTIONS)
    assert main(["report", str(c.build.folder / "nothing")]) == 1
    assert "not a qfab build folder" in capsys.readouterr().err


def test_bitstream_and_accuracy_sections_from_their_reports(compiled, tmp_path):
    """A real nextpnr report of the digits MLP (tests/data, from qfab bitstream --board icebreaker)
    fills resources and timing; the accuracy rows fill their section."""
    shutil.copytree(compiled[0].build.folder, tmp_path / "build")
    c = flow.CompileResult(build=Build.load(tmp_path / "build"))
    bitstream = json.loads((DATA / "bitstream_icebreaker.json").read_text())
    c.build.write_report("bitstream_icebreaker", bitstream)
    record_accuracy(c.build, [{"w_bits": 8, "a_bits": 8, "accuracy": 0.9806, "samples": 360},
                              {"w_bits": 4, "a_bits": 4, "accuracy": 0.9778, "samples": 360, "this_build": True}],
                    dataset="digits", float_accuracy=0.9806)
    page = build_report(c.build.folder).read_text()
    timing = _section(page, "timing")
    assert f"{bitstream['fmax_mhz']:.2f} MHz" in timing and f"{bitstream['requested_mhz']:g} MHz" in timing
    from qfab.boards.report import readable_cell
    assert " to ".join(readable_cell(x) for x in bitstream["critical_path"]) in timing
    resources = _section(page, "resources")
    used, available = bitstream["utilization"]["ICESTORM_LC"]
    assert f"<td class=num>{used:,}</td><td class=num>{available:,}</td>" in resources
    accuracy = _section(page, "accuracy")
    assert "w4a4 (this build)" in accuracy and "97.78%" in accuracy and "-0.28" in accuracy


def test_an_unreadable_report_is_said_in_its_section_only(compiled, tmp_path):
    shutil.copytree(compiled[0].build.folder, tmp_path / "build")
    build = Build.load(tmp_path / "build")
    build.write_report("simulation", [1, 2])
    (tmp_path / "build" / "reports" / "commands.json").write_text("{not json")
    page = build_report(build.folder).read_text()
    assert _sections(page) == list(SECTIONS)
    assert "could not show this section: TypeError" in _section(page, "simulation")
    assert "no commands recorded" in _section(page, "commands")
    assert "could not show" not in page.replace(_section(page, "simulation"), "")


# -- in the browser -------------------------------------------------------------------------------

@needs_chromium
def test_the_browser_check_sees_console_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>console.error('boom'); notDefined();</script></body></html>")
    _, console = render(page, tmp_path / "bad.png", height=200)
    assert any("boom" in line for line in console) and any("Uncaught" in line for line in console)


@needs_chromium
def test_compiled_build_in_chromium(compiled, tmp_path):
    c, _, _ = compiled
    dom, console = render(build_report(c.build.folder), tmp_path / "report.png")
    assert console == []
    assert _sections(dom) == list(SECTIONS)
    assert (tmp_path / "report.png").read_bytes()[:8] == PNG


@needs_chromium
@pytest.mark.verilator
@pytest.mark.board
@pytest.mark.slow
def test_simulated_build_with_a_bitstream_in_chromium(tmp_path, capsys):
    """The commands leave a page with every section filled: simulation bit-exact, the bitstream's
    resources and timing, the accuracy at 8 and 4 bits; the screenshot is also docs/report.png."""
    from qfab.compiler import reference
    from qfab.compiler.fgraph import forward
    from qfab.compiler.frontends.onnx_import import import_onnx
    x_train, _, x_test, y_test = digits("flat")
    mlp, build = _bundled("digits_mlp.onnx"), tmp_path / "build"
    np.save(tmp_path / "calib.npy", x_train)
    np.save(tmp_path / "x.npy", x_test[:20])
    assert main(["compile", mlp, "--calib", str(tmp_path / "calib.npy"), "--wbits", "4", "--abits", "4",
                 "--target-ii", "1024", "-o", str(build)]) == 0
    assert main(["simulate", str(build), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    assert main(["bitstream", str(build), "--board", "icebreaker"]) == 0
    fg = import_onnx(mlp)
    rows = []
    for bits in (8, 4):
        graph = flow.quantize(mlp, x_train, flow.quant_config(w_bits=bits, a_bits=bits), log=lambda m: None).graph
        rows.append({"w_bits": bits, "a_bits": bits, "samples": len(y_test), "this_build": bits == 4,
                     "accuracy": float((reference.run_float(graph, x_test).argmax(-1) == y_test).mean())})
    record_accuracy(Build.load(build), rows, dataset=f"scikit-learn digits, {len(y_test)} test images",
                    float_accuracy=float((forward(fg, x_test)[fg.outputs[0]].argmax(-1) == y_test).mean()))
    capsys.readouterr()
    assert main(["report", str(build)]) == 0
    dom, console = render(pathlib.Path(capsys.readouterr().out.strip()), tmp_path / "report.png")
    assert console == []
    assert _sections(dom) == list(SECTIONS)
    assert "bit-exact" in _section(dom, "simulation")
    fmax = Build.load(build).read_report("bitstream_icebreaker")["fmax_mhz"]
    assert f"{fmax:.2f} MHz" in _section(dom, "timing")
    assert f"{100 * rows[1]['accuracy']:.2f}%" in _section(dom, "accuracy")
    assert "no bitstream yet" not in dom and "not simulated yet" not in dom and "not recorded" not in dom
    steps = [e["step"] for e in Build.load(build).read_report("commands")["commands"]]
    assert steps == ["compile", "simulate", "bitstream"]
    assert (tmp_path / "report.png").read_bytes()[:8] == PNG
    _save_for_docs(tmp_path / "report.png", DOCS / "report.png")


def _save_for_docs(png, dest):
    """Copy the screenshot ``png`` to ``dest``, cut below the page's end and in 256 colours
    (Pillow comes with matplotlib; without it, as it is)."""
    try:
        from PIL import Image
    except ImportError:
        shutil.copyfile(png, dest)
        return
    import numpy
    image = Image.open(png).convert("RGB")
    ink = numpy.nonzero((numpy.asarray(image) < 250).any(axis=(1, 2)))[0]
    image = image.crop((0, 0, image.width, min(image.height, int(ink.max()) + 24)))
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(dest, optimize=True)
