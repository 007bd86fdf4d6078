"""Calibrate the pre-synthesis resource estimates (`qfab.compiler.estimate`) against Yosys.

Builds accelerators from the bundled digits MLP and CNN (and a small residual CNN for the Add,
AvgPool and GlobalAvgPool stages) across bits (w8a8, w4a4, w2a2), foldings (several target
initiation intervals) and both MAC styles, synthesizes each with ``synth_ice40 -dsp`` (the
bitstream flow's options; a few also with ``synth_ecp5``) keeping every Dataflow stage apart,
fits each stage kind's LUT and FF coefficients by non-negative least squares on a training split
of the designs, reports the error on the held-out designs per stage kind and per whole design,
and writes the coefficients to ``compiler/data/estimate_model.json``.

    python bench/calibrate_estimates.py [--quick] [--fit-only] [--no-write] [--residuals KIND]

Synthesis results are cached in ``bench/results/estimate_calibration.json``, keyed by the design,
the Yosys options and a hash of the hardware sources, so a rerun only synthesizes what changed
(``--fit-only``: nothing, it fits whatever is cached). A full run from an empty cache takes about
19 minutes here (52 designs, one Yosys at a time); ``--quick`` (6 designs, writes nothing) about
2.5. docs/estimates.md has the results.
"""

import argparse
import dataclasses
import datetime
import hashlib
import json
import pathlib
import sys
import tempfile
import time

import numpy as np
from scipy.optimize import nnls

from qfab.base.errors import QfabError
from qfab.boards import synth, toolchain
from qfab.compiler import estimate
from qfab.compiler.folding import choose_folding, stages_of

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "estimate_calibration.json"
MODEL_JSON = ROOT / "compiler" / "data" / "estimate_model.json"
MODELS = {"mlp": ("digits_mlp.onnx", "flat"), "cnn": ("digits_cnn.onnx", "NCHW"), "res": (None, "NCHW")}
OPTIONS = {"ice40": "-dsp", "ecp5": ""}
# target initiation intervals per (model, style): from fully folded to a few hundred lanes
IIS = {("mlp", "bit_parallel"): (4096, 512, 64), ("mlp", "bit_serial"): (8192, 1024, 128),
       ("cnn", "bit_parallel"): (18432, 4608, 1152, 576), ("cnn", "bit_serial"): (36864, 9216, 4608),
       ("res", "bit_parallel"): (4096, 1024), ("res", "bit_serial"): (8192,)}


@dataclasses.dataclass(frozen=True)
class Design:
    model: str
    bits: int
    ii: int
    style: str
    family: str = "ice40"

    @property
    def name(self):
        return f"{self.model}_w{self.bits}a{self.bits}_ii{self.ii}_{self.style[4:]}_{self.family}"


def designs(quick):
    if quick:
        out = [Design("mlp", 4, 512, "bit_parallel"), Design("mlp", 2, 1024, "bit_serial"),
               Design("cnn", 4, 4608, "bit_parallel"), Design("cnn", 8, 18432, "bit_parallel"),
               Design("cnn", 2, 9216, "bit_serial"), Design("mlp", 8, 4096, "bit_parallel")]
    else:
        out = [Design(model, bits, ii, style) for (model, style), iis in IIS.items()
               for bits in (8, 4, 2) for ii in iis]
        out += [Design("mlp", 4, 512, "bit_parallel", "ecp5"), Design("cnn", 4, 4608, "bit_parallel", "ecp5"),
                Design("cnn", 8, 1152, "bit_parallel", "ecp5"), Design("mlp", 2, 1024, "bit_serial", "ecp5")]
    return out


def held_out(design):
    """One bit width of three for each (model, style, II), rotating with the II: every folding and
    every bit width is both trained on and held out somewhere."""
    iis = IIS[(design.model, design.style)]
    i = iis.index(design.ii) if design.ii in iis else 0
    return (i + (8, 4, 2).index(design.bits)) % 3 == 0


def _residual_onnx(path):
    from qfab.compiler.frontends.onnx_write import float_model, save
    rng = np.random.default_rng(1)

    def w(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    layers = [("conv", w(8, 1, 3, 3), w(8, scale=0.1), 1, 1, 1), ("relu",),
              ("residual", [("conv", w(8, 8, 3, 3, scale=0.15), w(8, scale=0.1), 1, 1, 1), ("relu",)]),
              ("avgpool", 2, 2), ("conv", w(16, 8, 3, 3, scale=0.15), w(16, scale=0.1), 1, 1, 1), ("relu",),
              ("gap",), ("flatten",), ("gemm", w(10, 16), w(10, scale=0.1))]
    save(float_model(layers, (1, 8, 8)), path)
    return path


def graph_of(model, bits):
    from importlib.resources import files

    from qfab.compiler.datasets import digits
    from qfab.compiler.load import load_graph
    from qfab.compiler.ptq import QuantConfig
    file, layout = MODELS[model]
    x = digits(layout)[0][:400]
    config = QuantConfig(w_bits=bits, a_bits=bits, calib_method="minmax")
    if file is None:
        with tempfile.TemporaryDirectory() as tmp:
            return load_graph(_residual_onnx(pathlib.Path(tmp) / "res.onnx"), x, config)
    return load_graph(str(files("qfab.compiler") / "data" / file), x, config)


def _lanes(stage, fold):
    return fold.pe * fold.simd


def build(design):
    """(Dataflow top, {module name: descriptor}, folds) of a design; the folding takes the fewest lanes
    that reach the target (independent of the estimate model, so the designs do not move when
    the model is refitted)."""
    from qfab.compiler.lowering import build_top, plan_graph
    graph = graph_of(design.model, design.bits)
    stages = stages_of(graph)
    folds = choose_folding(stages, target_ii=design.ii, cost=_lanes, style=design.style)
    by_node = {s.name: s for s in stages}
    plan = plan_graph(graph, folds, by_node, family=design.family)
    top = build_top(plan)
    desc = {}
    for hs in plan.stages:
        node = next(n for n in graph.nodes if n.name == hs.node)
        if hs.kind == "window":
            h, w, c = graph.tensors[node.input].shape
            d = dict(kind="window", height=h, width=w, channels=c, kernel=list(node.kernel),
                     stride=list(node.stride), bits=graph.tensors[node.input].qtype.bits,
                     simd=folds[node.name].simd)
        else:
            d = dict(kind=hs.kind, stage=dataclasses.asdict(by_node[hs.node]),
                     fold=dataclasses.asdict(folds[hs.node]), m_bits=graph.m_bits)
            if hs.kind == "mvau":
                d["shifts"] = [int(v) for v in node.requant.shift]
        desc[f"top.{hs.name}"] = d
    # the plumbing under the names the plan gives it (and the Dataflow builds it with)
    for f in plan.forks:
        desc[f"top.{f.name}"] = dict(kind="fork", n=f.per_beat, bits=f.element.width, count=f.count)
    for e in plan.converters:
        desc[f"top.{e.converter}"] = dict(kind="convert", n_in=e.per_beat_src, n_out=e.per_beat_dst,
                                          bits=e.element.width)
    for e in plan.fifos:
        desc[f"top.{e.fifo}"] = dict(kind="fifo", depth=e.depth, width_bits=e.per_beat_dst * e.element.width)
    return top, desc, {name: dataclasses.asdict(fold) for name, fold in folds.items()}


def source_hash():
    """Hash of what decides the netlists and their synthesis: hw/, the lowering, Yosys's version."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "hw").glob("*.py")) + [ROOT / "compiler" / "lowering.py", ROOT / "compiler" / "plan.py"] \
            + sorted((ROOT / "compiler" / "ops").glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    version = toolchain.yosys_version() or ""
    h.update(version.encode())
    return h.hexdigest()[:16], version


DESCRIPTORS = 2      # version of the descriptors a record holds; older ones are rebuilt (no synthesis)


def measure(design, cache, key, timeout, log):
    if key in cache:
        record = cache[key]
        if record.get("descriptor_version") != DESCRIPTORS:
            record["descriptors"] = build(design)[1]
            record["descriptor_version"] = DESCRIPTORS
            record["refreshed"] = True
        return record
    t = time.monotonic()
    top, desc, folds = build(design)
    log(f"{design.name}: {len(desc)} modules, folds " + ", ".join(f"{n} {f['pe']}x{f['simd']}"
                                                               for n, f in folds.items()))
    try:
        res = synth.synthesize(top, design.family, keep="children", options=OPTIONS[design.family],
                               timeout=timeout, log=log, what=design.name)
    except synth.SynthesisTimeout as e:
        log(f"  skipped: {e}")
        return None
    modules = {name: c.as_dict() for name, c in res.modules.items()}
    missing = sorted(set(desc) - set(modules))
    if missing:
        raise QfabError(f"{design.name}: no statistics for {missing}")
    record = {"design": dataclasses.asdict(design), "descriptors": desc, "descriptor_version": DESCRIPTORS,
              "folds": folds, "modules": modules, "total": res.total.as_dict(),
              "seconds": round(time.monotonic() - t, 1)}
    cache[key] = record
    return record


def load_cache():
    try:
        return json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        return {}


def collect(todo, timeout, log=print, cached_only=False):
    cache = load_cache()
    digest, version = source_hash()
    records = []
    start = time.monotonic()
    for n, design in enumerate(todo, 1):
        key = f"{design.name}|{OPTIONS[design.family]}|{digest}"
        cached = key in cache
        if cached_only and not cached:
            continue
        if not cached:
            log(f"[{n}/{len(todo)}] {design.name} ({time.monotonic() - start:.0f} s so far)")
        record = measure(design, cache, key, timeout, log)
        if record is not None:
            records.append(record)
            if not cached or record.pop("refreshed", False):
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                RESULTS.write_text(json.dumps(cache, indent=0))
    return records, digest, version


def measured(cells, family):
    """(LUTs, FFs) as the estimates count them: an ECP5 CCU2C holds two LUT4s of adder logic that
    an iCE40 builds from its own LUT4s next to the SB_CARRY."""
    luts = cells["luts"] + (2 * cells["carries"] if family == "ecp5" else 0)
    return luts, cells["ffs"]


def terms_of(d, m, known_shifts=True):
    from qfab.compiler.folding import Fold, Stage
    if d["kind"] == "window":
        return estimate.window_terms(d["height"], d["width"], d["channels"], d["kernel"], d["stride"], d["bits"],
                                     d["simd"], m)
    if d["kind"] == "fifo":
        return estimate.fifo_terms(d["depth"], d["width_bits"], m)
    if d["kind"] == "convert":
        return estimate.converter_terms(d["n_in"], d["n_out"], d["bits"], m)
    if d["kind"] == "fork":
        return estimate.fork_terms(d["n"], d["bits"], d["count"], m)
    shifts = d.get("shifts") if known_shifts else None
    return estimate.stage_terms(Stage(**d["stage"]), Fold(**d["fold"]), m, d["m_bits"], shifts)


def rows(records, m, known_shifts=True):
    """One row per measured module: design, module, kind, terms, measured (luts, ffs, dsps, bram).
    ``known_shifts``: the MVAUs' terms from their real requantization shifts, else from the typical
    spread the compiler assumes (it does not pass the shifts to the estimate)."""
    out = []
    for r in records:
        design = Design(**r["design"])
        for name, d in r["descriptors"].items():
            cells = r["modules"][name]
            out.append(dict(design=design, module=name, descriptor=d, terms=terms_of(d, m, known_shifts),
                            measured=(*measured(cells, design.family), cells["dsps"], cells["bram"])))
    return out


def typical_shift_levels(train_rows):
    """Mean varying shift bits per PE lane of the training MVAUs whose shift ROMs are in logic."""
    levels = []
    for r in train_rows:
        d = r["descriptor"]
        if d["kind"] == "mvau" and 1 < d["stage"]["n"] // d["fold"]["pe"] < 16:
            nf, pe = d["stage"]["n"] // d["fold"]["pe"], d["fold"]["pe"]
            levels.append(estimate._shift_levels(d["shifts"], pe, nf, False) / pe)
    return round(float(np.mean(levels)), 2) if levels else estimate._DEFAULT["typical_shift_levels"]


def fit(train, defaults):
    """Non-negative least squares per stage kind and resource, relative-error weighted; kinds
    without data keep ``defaults``."""
    coefficients = dict(defaults)
    for kind in estimate.KINDS:
        sel = [r for r in train if r["terms"].kind == kind]
        if not sel:
            continue
        names = sorted({k for r in sel for k, v in r["terms"].values.items() if v})
        x = np.array([[r["terms"].values.get(k, 0) for k in names] for r in sel], dtype=float)
        coefficients[kind] = {}
        for index, resource in ((0, "luts"), (1, "ffs")):
            y = np.array([r["measured"][index] for r in sel], dtype=float)
            weight = 1 / np.sqrt(np.maximum(y, 20))
            scale = np.maximum(np.abs(x).max(axis=0), 1e-9)
            solution, _ = nnls((x / scale) * weight[:, None], y * weight)
            coef = solution / scale
            coefficients[kind][resource] = {k: float(f"{c:.4g}") for k, c in zip(names, coef) if c > 1e-9}
        # DSPs the structure does not count (constant multiplies of pools and adds): per lane
        extra = np.array([r["measured"][2] - r["terms"].dsps for r in sel], dtype=float)
        if kind in ("avgpool", "add") and extra.any():
            lanes = np.array([r["terms"].values["lanes"] for r in sel], dtype=float)
            coefficients[kind]["dsps"] = {"lanes": float(f"{extra.sum() / lanes.sum():.3g}")}
    return coefficients


def _pct(est, got):
    return 100 * abs(est - got) / max(got, 1)


def error_table(rows_, m, title):
    """Per stage kind: mean and worst absolute % error of LUTs and FFs; DSP and block RAM counts."""
    print(f"\n{title}")
    head = f"{'kind':<14}{'stages':>7}{'LUT mean%':>10}{'worst%':>8}{'FF mean%':>9}{'worst%':>8}" \
           f"{'DSP exact':>10}{'BRAM exact':>11}"
    print(head)
    print("-" * len(head))
    table = {}
    for kind in estimate.KINDS:
        sel = [r for r in rows_ if r["terms"].kind == kind]
        if not sel:
            continue
        est = [estimate.resources(r["terms"], m) for r in sel]
        lut = [_pct(e.luts, r["measured"][0]) for e, r in zip(est, sel)]
        ff = [_pct(e.ffs, r["measured"][1]) for e, r in zip(est, sel)]
        dsp = sum(e.dsps == r["measured"][2] for e, r in zip(est, sel))
        bram = sum(e.bram_blocks == r["measured"][3] for e, r in zip(est, sel))
        table[kind] = dict(stages=len(sel), lut_mean=float(np.mean(lut)), lut_worst=float(np.max(lut)),
                           ff_mean=float(np.mean(ff)), ff_worst=float(np.max(ff)), dsp_exact=dsp, bram_exact=bram)
        print(f"{kind:<14}{len(sel):>7}{np.mean(lut):>10.1f}{np.max(lut):>8.1f}{np.mean(ff):>9.1f}{np.max(ff):>8.1f}"
              f"{dsp:>6}/{len(sel):<3}{bram:>7}/{len(sel):<3}")
    return table


def design_table(rows_, records, m, title):
    """Whole designs: the sum of every module's estimate (stages, windows, FIFOs, width converters
    and forks, as in the manifest) against Yosys' total."""
    print(f"\n{title}")
    head = (f"{'design':<36}{'LUT est':>8}{'Yosys':>7}{'err%':>7}{'FF est':>8}{'Yosys':>7}{'err%':>7}"
            f"{'DSP':>8}{'BRAM':>8}")
    print(head)
    print("-" * len(head))
    errors = []
    for r in records:
        design = Design(**r["design"])
        mine = [x for x in rows_ if x["design"] == design]
        if not mine:
            continue
        est = estimate.total(estimate.resources(x["terms"], m) for x in mine)
        luts, ffs = measured(r["total"], design.family)
        e = dict(design=design.name, lut=100 * (est.luts - luts) / luts, ff=100 * (est.ffs - ffs) / ffs,
                 dsp=(est.dsps, r["total"]["dsps"]), bram=(est.bram_blocks, r["total"]["bram"]))
        errors.append(e)
        print(f"{design.name:<36}{est.luts:>8.0f}{luts:>7}{e['lut']:>+7.1f}{est.ffs:>8.0f}{ffs:>7}{e['ff']:>+7.1f}"
              f"{est.dsps:>4.0f}/{r['total']['dsps']:<3}{est.bram_blocks:>4.0f}/{r['total']['bram']:<3}")
    if errors:
        lut = [abs(e["lut"]) for e in errors]
        ff = [abs(e["ff"]) for e in errors]
        print(f"{'mean |error|':<36}{'':>15}{np.mean(lut):>7.1f}{'':>15}{np.mean(ff):>7.1f}")
        print(f"{'worst |error|':<36}{'':>15}{np.max(lut):>7.1f}{'':>15}{np.max(ff):>7.1f}")
    return errors


def scale_for(rows_, m):
    """One LUT and one FF factor from the fitted family to another (fitted on its own designs)."""
    est = estimate.total(estimate.resources(r["terms"], m) for r in rows_)
    got_luts = sum(r["measured"][0] for r in rows_)
    got_ffs = sum(r["measured"][1] for r in rows_)
    return {"luts": round(got_luts / est.luts, 3), "ffs": round(got_ffs / est.ffs, 3)}


def show_residuals(rows_, m):
    for r in sorted(rows_, key=lambda r: r["measured"][0]):
        e = estimate.resources(r["terms"], m)
        terms = " ".join(f"{k}={v}" for k, v in r["terms"].values.items() if v)
        print(f"{'held ' if held_out(r['design']) else 'train'} {r['design'].name:<34} {r['module']:<22} "
              f"LUT {e.luts:7.0f} / {r['measured'][0]:<6} FF {e.ffs:6.0f} / {r['measured'][1]:<6} "
              f"DSP {e.dsps:.0f}/{r['measured'][2]} BRAM {e.bram_blocks:.0f}/{r['measured'][3]}  {terms}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="six designs, iCE40 only (a few minutes)")
    parser.add_argument("--collect-only", action="store_true", help="synthesize (or read the cache), no fit")
    parser.add_argument("--fit-only", action="store_true", help="use the cached results only, synthesize nothing")
    parser.add_argument("--residuals", metavar="KIND", help="print every stage of one kind: terms, estimate, Yosys")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {MODEL_JSON.name}")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per synthesis (default 300)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    records, digest, version = collect(designs(args.quick), args.timeout, cached_only=args.fit_only)
    version = version.split(" (")[0]
    print(f"{len(records)} designs measured ({version}, hardware sources {digest}) "
          f"in {time.monotonic() - start:.0f} s")
    if args.collect_only:
        return 0
    ice40 = [r for r in records if r["design"]["family"] == "ice40"]
    ecp5 = [r for r in records if r["design"]["family"] == "ecp5"]
    m = dict(estimate.model("ice40"))
    train_records = [r for r in ice40 if not held_out(Design(**r["design"]))]
    test_records = [r for r in ice40 if held_out(Design(**r["design"]))]
    train = rows(train_records, m)
    n_train, n_test = len(train_records), len(test_records)
    print(f"fitting on {len(train)} stages of {n_train} designs; holding out {n_test} designs")
    m["coefficients"] = fit(train, m["coefficients"])
    m["typical_shift_levels"] = typical_shift_levels(train)
    m["scale"] = {"luts": 1.0, "ffs": 1.0}
    # the compiler passes each MVAU's requantization shifts (compile.design_estimates)
    test = rows(test_records, m, known_shifts=True)
    if args.residuals:
        show_residuals([r for r in rows(ice40, m) if r["terms"].kind == args.residuals], m)
    error_table(rows(train_records, m), m, "training designs, per stage kind (absolute % error)")
    stage_err = error_table(test, m, "HELD-OUT designs, per stage kind (absolute % error)")
    design_err = design_table(test, test_records, m,
                              "HELD-OUT designs, whole accelerator (estimate as in the manifest; signed % error)")
    unknown = rows(test_records, m, known_shifts=False)
    design_table(unknown, test_records, m, "HELD-OUT designs, whole accelerator, without the shifts "
                 "(the typical spread the model assumes when a caller has none)")
    families = {}
    if ecp5:
        m5 = {**estimate.model("ecp5"), "coefficients": m["coefficients"], "scale": {"luts": 1.0, "ffs": 1.0}}
        ecp5_rows = rows(ecp5, m5)
        families["ecp5"] = {"scale": scale_for(ecp5_rows, m5)}
        m5["scale"] = families["ecp5"]["scale"]
        print(f"\nECP5: LUT and FF factors from the iCE40 coefficients, fitted on all {len(ecp5)} ECP5 designs: "
              f"{families['ecp5']['scale']} (in-sample)")
        error_table(ecp5_rows, m5, "ECP5 designs, per stage kind (in-sample scale)")
        design_table(ecp5_rows, ecp5, m5, "ECP5 designs, whole accelerator (in-sample scale)")
    if args.quick or args.no_write:
        print(f"\n(not writing {MODEL_JSON.relative_to(ROOT)}: {'--quick' if args.quick else '--no-write'})")
        return 0
    lut = [abs(e["lut"]) for e in design_err]
    ff = [abs(e["ff"]) for e in design_err]
    doc = {
        "version": 2,
        "source": (f"fitted {datetime.date.today().isoformat()} by bench/calibrate_estimates.py to {version} "
                   f"synth_ice40 -dsp of {n_train} accelerators (digits MLP/CNN, a residual CNN; w8a8/w4a4/w2a2; "
                   f"several foldings; both MAC styles; hardware sources {digest}); on {n_test} held-out designs "
                   f"the whole-design LUT error is {np.mean(lut):.0f}% on average ({np.max(lut):.0f}% worst), "
                   f"FF {np.mean(ff):.0f}% ({np.max(ff):.0f}% worst); see docs/estimates.md"),
        "family": "ice40",
        "typical_shift_levels": m["typical_shift_levels"],
        "coefficients": m["coefficients"],
        "families": families,
    }
    if MODEL_JSON.exists():     # the clock model is bench/calibrate_fmax.py's: keep it
        fmax = json.loads(MODEL_JSON.read_text()).get("fmax")
        if fmax:
            doc["fmax"] = fmax
    MODEL_JSON.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {MODEL_JSON.relative_to(ROOT)}; per-kind held-out errors: "
          + ", ".join(f"{k} {v['lut_mean']:.0f}%" for k, v in stage_err.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
