"""Learn the clock model (`qfab.compiler.estimate.fmax_estimate`) per timing kind from routed builds.

Every ``qfab bitstream`` leaves nextpnr's achieved Fmax and its critical path (start and end cell)
in ``bitstream/BOARD/report.qfab.json`` beside the build's ``manifest.json``.
`qfab.boards.report.critical_path_kind` names the path's timing kind from the cells' hierarchy
(a stage's kind, ``requant.<mode>``, ``fifo``, ``link``, ...). Per device family, each kind's clock
is the median, over the builds whose critical path lay in it, of the achieved Fmax divided by the
fill derating (`estimate.fill_derate` of the device's tightest resource): the clock that kind
allows when the device has room. A kind never on a critical path keeps the family's
`estimate.FMAX_MHZ`. The result goes into the ``fmax`` section of ``compiler/data/estimate_model.json``,
which ``--board`` folding reads (the slowest kind a candidate design holds).

    python bench/calibrate_fmax.py [DIR ...] [--no-write]

Default DIR: bench/results/boards_builds (what ``python bench/boards.py`` keeps). Builds made with
older hardware are data about older hardware: calibrate from a fresh ``bench/boards.py`` run. The
script prints each build's kind, Fmax and fill, the fitted table, and each build's estimate
against its measured Fmax.
"""

import argparse
import datetime
import json
import pathlib
import statistics
import sys
from dataclasses import dataclass

from qfab.base.errors import QfabError
from qfab.boards.registry import get_board
from qfab.boards.report import critical_path_kind
from qfab.compiler import estimate
from qfab.compiler.buildfolder import Build

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILDS = ROOT / "bench" / "results" / "boards_builds"
MODEL_JSON = ROOT / "compiler" / "data" / "estimate_model.json"
# the cell types whose share of the device is the fill: logic, block RAM, DSPs
FILL_CELLS = ("ICESTORM_LC", "ICESTORM_RAM", "ICESTORM_DSP", "TRELLIS_COMB", "DP16KD", "MULT18X18D")


@dataclass(frozen=True)
class Observation:
    """One routed build: where, on which family, its Fmax, its fill, the kind its critical path
    lay in (None: not readable) and every timing kind the design holds."""
    name: str
    family: str
    fmax_mhz: float
    requested_mhz: float
    fill: float
    kind: str | None
    kinds: frozenset


def manifest_kinds(manifest):
    """The timing kinds of a build from its manifest (what `compile.plan_timing_kinds` gives
    from the plan)."""
    return frozenset(estimate.timing_kinds(
        [(s.kind, s.requant) for s in manifest.stages], fifos=any(f.depth > 0 for f in manifest.fifos),
        converters=bool(manifest.converters), forks=bool(manifest.forks)))


def observe(report_file):
    """The `Observation` of one ``report.qfab.json`` (its build folder two levels up), or None
    when the report has no Fmax or the folder is not a whole build (`Build.load`'s checks)."""
    report = json.loads(pathlib.Path(report_file).read_text())
    folder = pathlib.Path(report_file).resolve().parents[2]
    if not report.get("fmax_mhz"):
        return None
    try:
        manifest = Build.load(folder).manifest
    except QfabError as e:
        print(f"skipped {report_file}: {e}", file=sys.stderr)
        return None
    util = report.get("utilization", {})
    fill = max([used / avail for cell, (used, avail) in util.items() if cell in FILL_CELLS and avail] or [0.0])
    name = folder.name if folder.name != "build" else folder.parent.name
    return Observation(f"{name} ({report['board']})", get_board(report["board"]).family, report["fmax_mhz"],
                       report["requested_mhz"], fill, critical_path_kind(report.get("critical_path", ()), manifest),
                       manifest_kinds(manifest))


def fit(observations):
    """``{family: {kind: MHz}}``: per family and kind, the median of Fmax / `estimate.fill_derate`
    over the observations whose critical path lay in that kind, to 0.1 MHz."""
    samples = {}
    for o in observations:
        if o.kind is not None:
            samples.setdefault(o.family, {}).setdefault(o.kind, []).append(o.fmax_mhz / estimate.fill_derate(o.fill))
    return {fam: {kind: round(statistics.median(v), 1) for kind, v in sorted(kinds.items())}
            for fam, kinds in samples.items()}


def predict(kinds_mhz, family, o):
    """The estimate a fitted table gives an observed design (its kinds, at its fill)."""
    return estimate.fmax_estimate(family, o.fill, o.kinds, learned=kinds_mhz)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="*", default=[str(BUILDS)], help="folders searched for bitstream reports")
    p.add_argument("--no-write", action="store_true", help="print the fit, do not write estimate_model.json")
    args = p.parse_args(argv)
    reports = sorted({f for d in args.dirs for f in pathlib.Path(d).rglob("report.qfab.json")})
    obs = [o for o in map(observe, reports) if o is not None]
    if not obs:
        print(f"no routed builds under {', '.join(args.dirs)}: run python bench/boards.py first", file=sys.stderr)
        return 1
    print("| build | family | asked | Fmax | fill | critical path in |")
    print("|---|---|---|---|---|---|")
    for o in obs:
        print(f"| {o.name} | {o.family} | {o.requested_mhz:g} MHz | {o.fmax_mhz:.1f} MHz | {100 * o.fill:.0f} % "
              f"| {o.kind or '(unreadable)'} |")
    table = fit(obs)
    print("\n| family | kind | learned Fmax (at low fill) | builds |")
    print("|---|---|---|---|")
    for fam, kinds in table.items():
        for kind, mhz in kinds.items():
            n = sum(o.family == fam and o.kind == kind for o in obs)
            print(f"| {fam} | {kind} | {mhz:.1f} MHz | {n} |")
    print("\n| build | measured | estimated | error |")
    print("|---|---|---|---|")
    for o in obs:
        est = predict(table.get(o.family, {}), o.family, o)
        print(f"| {o.name} | {o.fmax_mhz:.1f} MHz | {est:.1f} MHz | {100 * (est - o.fmax_mhz) / o.fmax_mhz:+.0f} % |")
    if args.no_write:
        return 0
    doc = json.loads(MODEL_JSON.read_text())
    day = datetime.date.today().isoformat()
    doc["fmax"] = {fam: {"kinds": kinds, "builds": sum(o.family == fam for o in obs),
                         "source": f"fitted {day} by bench/calibrate_fmax.py to the critical paths of "
                                   f"{sum(o.family == fam for o in obs)} routed builds"}
                   for fam, kinds in table.items()}
    MODEL_JSON.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote the fmax section of {MODEL_JSON.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
