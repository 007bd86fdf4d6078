# amaranth: UnusedElaboratable=no
"""compile_graph: folding by target interval, by resource budget, by hand; clear errors."""

import json
import pathlib

import numpy as np
import pytest

from qfab.base.errors import QfabError
from qfab.compiler.buildfolder import Build
from qfab.compiler.compile import Budget, compile_graph, load_folding
from qfab.compiler.datasets import digits
from qfab.compiler.folding import Fold
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import QuantConfig


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


@pytest.fixture(scope="module")
def cnn():
    return load_graph(_bundled("digits_cnn.onnx"), digits("NCHW")[0], QuantConfig(w_bits=4, a_bits=4))


def test_budget_picks_the_fastest_design_that_fits(cnn, tmp_path):
    small = compile_graph(cnn, tmp_path / "a", budget=Budget(luts=2500), log=lambda *a: None).manifest
    large = compile_graph(cnn, tmp_path / "b", budget=Budget(luts=40000), log=lambda *a: None).manifest
    assert small.estimates.total.luts <= 2500
    # the first max pool's floor (one window position per cycle; the first convolution, one input
    # channel, takes whole windows from a WideWindow and is no longer held at 576 cycles)
    assert large.initiation_interval == 64 < small.initiation_interval
    # the budget is checked on the same total the manifest reports, streams included: one cycle
    # faster than the choice, the cheapest design's total no longer fits
    faster = compile_graph(cnn, tmp_path / "f", target_ii=small.initiation_interval - 1, log=lambda *a: None).manifest
    assert faster.estimates.total.luts > 2500 >= small.estimates.total.luts
    for manifest in (small, large):
        est = manifest.estimates
        assert est.streams["fifos"].luts > 0 and est.streams["converters"].luts > 0
    with pytest.raises(QfabError, match="does not fit the resource budget even fully folded: estimated luts"):
        compile_graph(cnn, tmp_path / "c", budget=Budget(luts=100), log=lambda *a: None)


def test_target_ii_that_cannot_be_met_names_the_layer(cnn, tmp_path):
    # the first max pool: 16 windows x 4 positions x 8 channels at one position per cycle
    with pytest.raises(QfabError, match=r"cannot be met: layer 'maxpool_10' needs at least 64 cycles"):
        compile_graph(cnn, tmp_path / "x", target_ii=10, log=lambda *a: None)


def test_manual_folding_file(cnn, tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"conv_13": {"pe": 4, "simd": 8, "style": "bit_serial"}}))
    folds = load_folding(path)
    assert folds == {"conv_13": Fold(4, 8, "bit_serial")}
    manifest = compile_graph(cnn, tmp_path / "b", folding=folds, log=lambda *a: None).manifest
    stage = manifest.stage("conv_13")
    assert (stage.pe, stage.simd, stage.style) == (4, 8, "bit_serial")
    assert stage.cycles == 16 * (16 // 4) * (72 // 8) * 4
    path.write_text(json.dumps({"conv_13": {"pe": 3}}))
    with pytest.raises(QfabError, match="PE=3 must divide 16"):
        compile_graph(cnn, tmp_path / "c", folding=load_folding(path), log=lambda *a: None)
    path.write_text(json.dumps({"nope": {"pe": 1}}))
    with pytest.raises(QfabError, match="names layer 'nope'"):
        compile_graph(cnn, tmp_path / "d", folding=load_folding(path), log=lambda *a: None)


def test_folding_file_names_the_requantization(cnn, tmp_path):
    """A folding file may choose a matrix layer's requantization; the manifest reports every
    layer's, and a mode the fold leaves no cycles for, a pool, or an unknown mode are refused."""
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"conv_13": {"pe": 1, "simd": 1, "requant": "shift_add"},
                                "gemm_24": {"requant": "thresholds"}}))
    folds = load_folding(path)
    assert folds["conv_13"] == Fold(1, 1, "bit_parallel", 1, "shift_add")
    manifest = compile_graph(cnn, tmp_path / "b", folding=folds, log=lambda *a: None).manifest
    modes = {s.name: s.requant for s in manifest.stages}
    assert modes["conv_13"] == "shift_add" and modes["gemm_24"] == "thresholds" and modes["maxpool_10"] is None
    assert modes["conv_3"] in ("multiply", "shift_add", "thresholds", "search")
    plain = compile_graph(cnn, tmp_path / "p", folding={"conv_13": Fold(1, 1)}, log=lambda *a: None).manifest
    assert {s.name: s.requant for s in plain.stages}["gemm_24"] != "thresholds"     # the choice was the file's
    # whole windows and every output channel at once: one cycle per output beat, no time to search
    with pytest.raises(QfabError, match=r"layer 'conv_13': requantization 'search' is not possible at PE=16, "
                                        r"SIMD=72 \(1 cycles per output beat\)"):
        compile_graph(cnn, tmp_path / "c", folding={"conv_13": Fold(16, 72, requant="search")}, log=lambda *a: None)
    with pytest.raises(QfabError, match="layer 'maxpool_10': requant='multiply' is for matrix layers"):
        compile_graph(cnn, tmp_path / "d", folding={"maxpool_10": Fold(requant="multiply")}, log=lambda *a: None)
    path.write_text(json.dumps({"conv_13": {"requant": "lut"}}))
    with pytest.raises(QfabError, match="requant of 'conv_13' must be one of multiply, shift_add"):
        load_folding(path)


def test_spend_dsps_moves_requantization_only_when_the_logic_does_not_fit():
    """`spend_dsps` leaves folds that fit with room alone; otherwise (or above `CROWDED` of the
    cells) it moves the layers that save the most logic per DSP onto the DSPs the budget has
    left, and never more than that."""
    from qfab.compiler import estimate
    from qfab.compiler.compile import CROWDED, design_estimates, spend_dsps
    from qfab.compiler.folding import stages_of
    graph = load_graph(_bundled("digits_cnn.onnx"), digits("NCHW")[0][:300], QuantConfig(w_bits=8, a_bits=8))
    stages = stages_of(graph)
    folds = {s.name: Fold() for s in stages}
    total = design_estimates(graph, stages, folds)[2]
    cells = estimate.logic_cells(total)
    assert total.dsps == 0
    roomy = Budget(logic_cells=round(cells / CROWDED) + 10, dsps=8)
    assert spend_dsps(graph, stages, folds, roomy) is folds
    crowded = spend_dsps(graph, stages, folds, Budget(logic_cells=round(cells) + 10, dsps=8))
    assert any(f.requant == "multiply" for f in crowded.values())
    assert spend_dsps(graph, stages, folds, Budget(logic_cells=round(cells) - 10)) is folds     # no DSP limit
    tight = Budget(logic_cells=round(cells) - 10, dsps=8)
    spent = spend_dsps(graph, stages, folds, tight)
    moved = {name for name, f in spent.items() if f.requant == "multiply"}
    assert moved and all(spent[n] == folds[n] for n in set(folds) - moved)
    after = design_estimates(graph, stages, spent)[2]
    assert 0 < after.dsps <= 8 and estimate.logic_cells(after) < cells
    one = spend_dsps(graph, stages, folds, Budget(logic_cells=round(cells) - 10, dsps=after.dsps - 1))
    assert design_estimates(graph, stages, one)[2].dsps <= after.dsps - 1


def test_build_folder_contents(cnn, tmp_path):
    manifest = compile_graph(cnn, tmp_path / "b", target_ii=1152, log=lambda *a: None).manifest
    assert (tmp_path / "b" / "qfab_top.v").read_text().count("module qfab_top") == 1
    assert not (tmp_path / "b" / "qfab_top_sim.v").exists()     # one netlist for synthesis and simulation
    assert manifest.activity_bits == 2 * len(manifest.counters_layout) > 0
    assert manifest.input.elements == 64 and manifest.output.elements == 10
    assert manifest.initiation_interval == 1152
    assert all(f.depth >= 3 for f in manifest.fifos)
    assert Build.load(tmp_path / "b").manifest == manifest


@pytest.mark.parametrize("ii, logic", [(4096, {"gemm_3": False, "gemm_7": False, "gemm_11": False}),
                                       (64, {"gemm_3": True, "gemm_7": True, "gemm_11": True})])
def test_weights_become_constants_where_their_rom_stays_in_logic(ii, logic):
    """Fully folded, the MLP's weights are deep ROMs: block RAM. At 64 cycles they are shallow and
    wide, a ROM Yosys keeps in logic anyway: built in as constants, so the MAC arrays know them."""
    from amaranth.hdl import Fragment

    from qfab.compiler import estimate
    from qfab.compiler.folding import choose_folding, stages_of
    from qfab.compiler.lowering import build_top, plan_graph, stage_component
    from qfab.hw.weights import MemoryKind
    graph = load_graph(_bundled("digits_mlp.onnx"), digits("flat")[0], QuantConfig(w_bits=4, a_bits=4))
    stages = stages_of(graph)
    folds = choose_folding(stages, target_ii=ii, cost=estimate.cost_luts)
    plan = plan_graph(graph, folds, {s.name: s for s in stages})
    assert {s.node: s.params["weight_memory"] for s in plan.stages} == \
        {name: "logic" if v else "block" for name, v in logic.items()}
    components = {s.node: stage_component(s) for s in plan.stages}
    assert {name: c._wmem.kind for name, c in components.items()} == \
        {name: MemoryKind.LOGIC if v else MemoryKind.BLOCK for name, v in logic.items()}
    for name, c in components.items():              # the constant lanes know the weights
        assert (c._mac.weights is not None) == logic[name]
        Fragment.get(c, None)
    for s in stages:
        assert estimate.weights_in_logic(s, folds[s.name]) == logic[s.name]
    Fragment.get(build_top(plan), None)             # elaborates (and so uses) every component


def test_weight_policy_does_not_read_the_fitted_model(monkeypatch):
    """Refitting the estimate model must not change the hardware: the lowering's weight placement
    reads the family's fixed structure only, even if the fitted model says otherwise."""
    from qfab.compiler import estimate
    from qfab.compiler.folding import choose_folding, stages_of
    from qfab.compiler.lowering import WeightPolicy, plan_graph
    graph = load_graph(_bundled("digits_mlp.onnx"), digits("flat")[0], QuantConfig(w_bits=4, a_bits=4))
    stages = stages_of(graph)
    folds = choose_folding(stages, target_ii=64, cost=estimate.cost_luts)
    before = [s.params["weight_memory"] for s in plan_graph(graph, folds, {s.name: s for s in stages}).stages]
    fitted = dict(estimate.model("ice40"), logic_weight_limit_bits=0, rom_logic_cost=100.0)
    monkeypatch.setattr(estimate, "model", lambda family="ice40": fitted)
    after = [s.params["weight_memory"] for s in plan_graph(graph, folds, {s.name: s for s in stages}).stages]
    assert before == after == ["logic"] * 3
    forced = plan_graph(graph, folds, {s.name: s for s in stages}, policy=WeightPolicy("block"))
    assert [s.params["weight_memory"] for s in forced.stages] == ["block"] * 3


@pytest.mark.parametrize("ii", [576, 2304])
def test_plan_names_the_plumbing_the_hardware_builds(tmp_path, ii):
    """The plan is complete: every fork, width converter and FIFO the Dataflow builds is a part
    the plan names, of the plan's kind, and nothing else is inserted."""
    from amaranth.hdl import Fragment

    from qfab.compiler import estimate
    from qfab.compiler.folding import choose_folding, stages_of
    from qfab.compiler.frontends.onnx_write import float_model, save
    from qfab.compiler.lowering import build_top, plan_graph
    from qfab.hw.plumbing import Fork, StreamFIFO, WidthConverter
    rng = np.random.default_rng(1)
    def w(*shape):
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)
    layers = [("conv", w(4, 1, 3, 3), w(4), 1, 1, 1), ("relu",),
              ("residual", [("conv", w(4, 4, 3, 3), w(4), 1, 1, 1), ("relu",)]),
              ("flatten",), ("gemm", w(10, 256), w(10))]
    save(float_model(layers, (1, 8, 8)), tmp_path / "res.onnx")
    x = rng.uniform(0, 1, (64, 1, 8, 8)).astype(np.float32)
    graph = load_graph(str(tmp_path / "res.onnx"), x, QuantConfig(w_bits=4, a_bits=4))
    stages = stages_of(graph)
    folds = choose_folding(stages, target_ii=ii, cost=estimate.cost_luts)
    plan = plan_graph(graph, folds, {s.name: s for s in stages})
    assert plan.forks and plan.fifos
    fragment = Fragment.get(build_top(plan), None)
    named = {sub[1]: sub[0].origins[0] for sub in fragment.subfragments}
    parts = {name: sub for name, sub in named.items() if name.startswith("_")}
    kinds = {f.name: Fork for f in plan.forks} | {e.converter: WidthConverter for e in plan.converters} \
        | {e.fifo: StreamFIFO for e in plan.fifos}
    assert {name: type(sub) for name, sub in parts.items()} == kinds
    assert set(named) - set(parts) == {s.name for s in plan.stages}


def test_manifest_records_the_plan(tmp_path):
    """The manifest lists the plan's stages and every fork, converter and FIFO under its name."""
    from qfab.compiler import estimate
    from qfab.compiler.folding import choose_folding, stages_of
    from qfab.compiler.lowering import plan_graph
    graph = load_graph(_bundled("digits_cnn.onnx"), digits("NCHW")[0][:200], QuantConfig(w_bits=4, a_bits=4))
    build = compile_graph(graph, tmp_path / "b", target_ii=1152, log=lambda *a: None)
    stages = stages_of(graph)
    folds = choose_folding(stages, target_ii=1152, cost=estimate.cost_luts)
    plan = plan_graph(graph, folds, {s.name: s for s in stages})
    m = Build.load(tmp_path / "b").manifest
    assert [s.name for s in m.stages] == [s.name for s in plan.stages]
    assert [f.name for f in m.fifos] == [e.name for e in plan.fifos]
    assert [(c.name, c.n_in, c.n_out) for c in m.converters] == \
        [(e.converter, e.per_beat_src, e.per_beat_dst) for e in plan.converters]
    assert [(f.name, f.count) for f in m.forks] == [(f.name, f.count) for f in plan.forks]
    assert m.converters, "the CNN at II 1152 has width converters"
    assert build.manifest == m


def test_timing_aware_folding_trades_interval_for_clock():
    """With ``speed``, the budget's choice is the fitting design of the most inferences per second
    among the smallest fitting interval and those up to twice it; without it, the smallest."""
    from qfab.compiler import estimate
    from qfab.compiler.folding import choose_folding
    from qfab.compiler.plan import Stage
    stages = [Stage("fc", "mvau", n=4, k=4, vectors=1, simd_of=4)]

    def cycles(folds):
        return stages[0].cycles(folds["fc"])

    def fits(folds):
        return cycles(folds) >= 2, "too big"
    clock = {2: 0.4, 4: 0.96, 8: 100.0, 16: 1.0}          # a full device at II 2 clocks low

    def speed(folds):
        return clock[cycles(folds)] / cycles(folds)
    assert cycles(choose_folding(stages, budget=fits, cost=estimate.cost_luts)) == 2
    # II 4 is faster (0.24 > 0.2 per cycle); II 8, beyond twice the smallest, is not considered
    assert cycles(choose_folding(stages, budget=fits, cost=estimate.cost_luts, speed=speed)) == 4
    clock[4] = 0.8                                       # a tie keeps the smaller interval
    assert cycles(choose_folding(stages, budget=fits, cost=estimate.cost_luts, speed=speed)) == 2


def test_fmax_estimate_takes_the_slowest_learned_kind(monkeypatch):
    from qfab.compiler import estimate
    monkeypatch.setattr(estimate, "fmax_by_kind", lambda family: {"requant.search": 30.0, "link": 34.0, "mvau": 40.0})
    assert estimate.fmax_estimate("ice40", 0.5, {"mvau", "requant.search", "link"}) == 30.0
    assert estimate.fmax_estimate("ice40", 0.5, {"mvau", "requant.shift_add", "link"}) == 34.0
    assert estimate.fmax_estimate("ice40", 0.5, {"mvau", "window"}) == 36.0       # window: the family's clock
    assert estimate.fmax_estimate("ice40", 0.5, {"mvau"}) == 40.0                 # learned above it
    assert estimate.fmax_estimate("ice40", 0.5) == 36.0                            # kinds not known
    assert estimate.fmax_estimate("ice40", 0.98, {"requant.search"}) == pytest.approx(30.0 * (1 - 1.2 * 0.13))


def test_timing_kinds_of_a_plan_and_of_its_manifest_agree(cnn, tmp_path):
    """The kinds folding reads from a plan are the kinds the clock calibration reads back from the
    build's manifest (bench/calibrate_fmax.py), so what is learned is what is used."""
    import sys

    from qfab.compiler import estimate
    from qfab.compiler.compile import plan_timing_kinds
    from qfab.compiler.folding import choose_folding, stages_of
    from qfab.compiler.lowering import plan_graph
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))
    from calibrate_fmax import manifest_kinds

    graph = cnn
    stages = stages_of(graph)
    folds = choose_folding(stages, target_ii=2304, cost=estimate.cost_luts)
    plan = plan_graph(graph, folds, {s.name: s for s in stages})
    kinds = plan_timing_kinds(plan)
    modes = {f"requant.{s.params['requant']}" for s in plan.stages if s.kind == "mvau"}
    assert kinds == {"window", "mvau", "maxpool", "fifo", "link", "top"} | modes | (
        {"convert"} if plan.converters else set())
    manifest = compile_graph(graph, tmp_path / "b", target_ii=2304, log=lambda *a: None).manifest
    assert manifest_kinds(manifest) == kinds


def test_calibrate_fmax_fit_is_the_median_at_low_fill():
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))
    from calibrate_fmax import Observation, fit, predict

    from qfab.compiler import estimate

    def o(fmax, fill, kind, family="ice40"):
        return Observation("d", family, fmax, 12.0, fill, kind, frozenset({"mvau", "link", kind or "mvau"}))
    obs = [o(30.0, 0.5, "mvau"), o(34.0, 0.5, "mvau"), o(40.0, 0.5, "mvau"), o(33.0, 0.95, "link"),
           o(25.0, 0.5, None), o(80.0, 0.2, "fifo", "ecp5")]
    table = fit(obs)
    assert table == {"ice40": {"link": round(33.0 / estimate.fill_derate(0.95), 1), "mvau": 34.0},
                     "ecp5": {"fifo": 80.0}}
    assert predict(table["ice40"], "ice40", obs[0]) == 34.0           # min(mvau 34, link 37.5)
    assert predict(table["ecp5"], "ecp5", obs[-1]) == 80.0


def test_fmax_estimate_falls_above_the_knee():
    from qfab.compiler import estimate
    assert estimate.fmax_estimate("ice40", 0.5) == estimate.fmax_estimate("ice40", estimate.FILL_KNEE) == 36.0
    assert estimate.fmax_estimate("ice40", 0.98) == pytest.approx(36.0 * (1 - 1.2 * 0.13))
    assert estimate.fmax_estimate("ecp5", 0.2) == 90.0
    budget = Budget(luts=1000, logic_cells=2000, family="ice40")
    res = estimate.Resources(luts=500, ffs=800)
    assert budget.fill(res) == pytest.approx(max(0.5, estimate.logic_cells(res, "ice40") / 2000))
