"""FINN's published designs through qfab's bitstream flow: resources, Fmax and rate beside FINN's figures.

FINN's topologies (Umuroglu et al., FPGA 2017, and the BNN-PYNQ repository): the MLPs TFC
(784-64-64-64-10), SFC (784-256-256-256-10) and LFC (784-1024-1024-1024-10), and the CNN CNV
(32x32x3; conv 64-64-pool-128-128-pool-256-256; FC 512-512-10), each at w1a1 and w2a2 and at a few
folds (target initiation intervals), are built by `bench/compile_time.py`'s model builders (random
weights quantized by qfab's PTQ on random calibration data: resources and rates do not depend on
accuracy), lowered for the board's family with ``compile_graph(target_ii=...)`` (what
``qfab compile --target-ii`` does) and taken to a bitstream with `qfab.boards.bitstream.build_bitstream`
(what ``qfab bitstream`` does), on the ULX3S-85F (ECP5) and the iCEBreaker (iCE40 UP5K). A design
whose estimate does not fit the board is refused as ``qfab bitstream`` refuses it (without
``--force``), and one that nextpnr cannot place is recorded too: "does not fit" with the reason.

    python bench/finn_suite.py --list
    nice -n 10 python bench/finn_suite.py --topologies tfc --bits 1,2 --boards ulx3s_85f,icebreaker
    python bench/finn_suite.py --table [--markdown]

Each design point has a folder under ``--out`` (default bench/results/finn_suite/, not tracked):
the ONNX model, the build folder (with the tools' files in ``build/bitstream/BOARD/``), ``point.log``
and, once finished, ``result.json`` (written atomically). A rerun skips finished points (``--force``
redoes them); a point interrupted or failed with an error is redone. ``--jobs N`` runs N points at
once in separate processes.
"""

import argparse
import concurrent.futures
import contextlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from compile_time import CNV, FOLDS, MLPS, quantized  # noqa: E402  (bench/ is not a package)

TOPOLOGIES = ("tfc", "sfc", "lfc", CNV)
BITS = (1, 2)
BOARDS = ("ulx3s_85f", "icebreaker")
OUT = pathlib.Path(__file__).resolve().parent / "results" / "finn_suite"
RESULT = "result.json"
LOG = "point.log"

# FINN's published figures (the only numbers in the table not measured here)
FINN = {
    "sfc": "SFC-max w1a1: 12.3 M images/s (ZC706, 200 MHz)",
    "cnv": "CNV-max w1a1: 21,906 images/s (ZC706, 200 MHz)",
    "lfc": "LFC-w1a1: 28,360 LUT, 33,470 FF, 110 BRAM tiles (PYNQ-Z1)",
}
FINN_SOURCES = ("FINN's figures: SFC-max and CNV-max from FINN (Umuroglu et al., FPGA 2017) on the ZC706 at "
                "200 MHz; LFC-w1a1 from BNN-PYNQ on the PYNQ-Z1 (Vivado 2018.2). Xilinx LUTs are LUT6.")
FINN_RATES = {"sfc": 12.3e6, "cnv": 21906.0}    # images/s at 200 MHz (FPGA 2017, Table 2)
FINN_MHZ = 200.0


def board_name(name):
    """``ulx3s-85f`` and ``ulx3s_85f`` both name the registry's ``ulx3s_85f``."""
    return name.strip().lower().replace("-", "_")


def points(topologies=TOPOLOGIES, bits=BITS, boards=BOARDS, iis=None):
    """The design points, smallest first: dicts of topology, bits, target II, board and key."""
    out = []
    for topology in topologies:
        for b in bits:
            for ii in sorted(iis or FOLDS[topology], reverse=True):
                for board in boards:
                    out.append({"topology": topology, "bits": b, "target_ii": ii, "board": board,
                                "key": f"{topology}_w{b}a{b}_ii{ii}_{board}"})
    return out


def _write_json(path, data):
    """Write atomically: a reader (or a rerun) sees the old file or the whole new one."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def finished(folder):
    """The cached result of a point folder, or None when it has to be (re)done: no result yet
    (never run or interrupted), or an error that was not a "does not fit"."""
    path = pathlib.Path(folder) / RESULT
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("status") in ("ok", "does not fit") else None


def _refusal(graph, target_ii, board):
    """Why ``qfab bitstream`` (without ``--force``) refuses the design at ``target_ii`` on ``board``
    by its estimate (None: it does not), found before lowering (which takes minutes for big designs)."""
    from qfab.boards.registry import budget_for
    from qfab.compiler import estimate
    from qfab.compiler.compile import design_estimates
    from qfab.compiler.folding import choose_folding, stages_of
    budget = budget_for(board)
    stages = stages_of(graph)
    folds = choose_folding(stages, target_ii=target_ii, cost=estimate.cost_luts)
    total = design_estimates(graph, stages, folds, budget.family)[2]
    ok, why = budget.check(total)
    return None if ok else f"qfab refuses it by its estimate at II {target_ii}: {why}"


def build_point(point, folder, *, freq_mhz=None, log=print):
    """Quantize, lower and take one design point to a bitstream in ``folder``; the result dict."""
    from qfab.base.errors import QfabError
    from qfab.boards.bitstream import build_bitstream
    from qfab.boards.registry import budget_for, get_board
    from qfab.compiler.compile import compile_graph
    from qfab.compiler.ops import op_for
    board = get_board(point["board"])
    graph = quantized(point["topology"], point["bits"], folder)
    macs = int(sum(op_for(n).macs(graph, n) for n in graph.nodes))
    result = {"macs": macs}
    why = _refusal(graph, point["target_ii"], board)
    if why:
        return result | {"status": "does not fit", "reason": why}
    t = time.monotonic()
    build = compile_graph(graph, folder / "build", target_ii=point["target_ii"], family=board.family, log=log)
    manifest = build.manifest
    result.update(ii=manifest.initiation_interval, compile_s=round(time.monotonic() - t, 1),
                  estimate=manifest.estimates.total.as_dict())
    ok, why = budget_for(board).check(manifest.estimates.total)
    if not ok:
        return result | {"status": "does not fit", "reason": f"qfab refuses it by its estimate: {why}"}
    try:
        report = build_bitstream(folder / "build", board.name, freq_mhz=freq_mhz, log=log)
    except QfabError as e:
        if "does not fit" not in str(e):
            raise
        return result | {"status": "does not fit", "reason": f"nextpnr: {str(e).split('. Fold')[0]}"}
    return result | {"status": "ok", "report": report.as_dict()}


def run_point(point, out, freq_mhz=None, builder=None):
    """Run one point in its folder under ``out`` (logging to its ``point.log``) and write its
    ``result.json``; returns the result. ``builder`` replaces `build_point` (tests)."""
    builder = builder or build_point
    folder = pathlib.Path(out) / point["key"]
    if folder.exists():                          # an interrupted or failed run: start clean
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    start = time.monotonic()
    with open(folder / LOG, "w", buffering=1) as logf, contextlib.redirect_stdout(logf), \
            contextlib.redirect_stderr(logf):
        def log(*args):
            print(f"[{time.monotonic() - start:7.1f} s]", *args, file=logf, flush=True)
        try:
            result = builder(point, folder, freq_mhz=freq_mhz, log=log)
        except Exception as e:                   # noqa: BLE001  (recorded, redone on a rerun)
            import traceback
            traceback.print_exc(file=logf)
            result = {"status": "error", "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    result = dict(point) | result | {"freq_mhz": freq_mhz, "seconds": round(time.monotonic() - start, 1),
                                     "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    _write_json(folder / RESULT, result)
    return result


def run_points(todo, out, *, jobs=1, force=False, freq_mhz=None, builder=None, say=print):
    """Run the points not finished yet (all with ``force``), ``jobs`` at a time; returns every
    point's result (cached or new), in the order of ``todo``."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, pending = {}, []
    for p in todo:
        cached = None if force else finished(out / p["key"])
        if cached is not None:
            say(f"{p['key']}: cached ({cached['status']})")
            results[p["key"]] = cached
        else:
            pending.append(p)
    t0 = time.monotonic()

    def done(p, r):
        results[p["key"]] = r
        extra = f": {r.get('reason')}" if r["status"] != "ok" else \
            f": Fmax {r['report'].get('fmax_mhz') or 0:.1f} MHz, II {r['ii']}"
        say(f"{p['key']}: finished in {r['seconds']:.0f} s ({r['status']}{extra}) "
            f"[{len(results)}/{len(todo)}, {time.monotonic() - t0:.0f} s elapsed]")

    if jobs <= 1:
        for p in pending:
            say(f"{p['key']}: started (log {out / p['key'] / LOG})")
            done(p, run_point(p, out, freq_mhz, builder))
    else:
        with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
            futures = {}
            for p in pending:
                futures[pool.submit(run_point, p, out, freq_mhz, builder)] = p
                say(f"{p['key']}: queued (log {out / p['key'] / LOG})")
            for f in concurrent.futures.as_completed(futures):
                done(futures[f], f.result())
    return [results[p["key"]] for p in todo]


def cached_results(out, todo=None):
    """The finished results under ``out`` (of ``todo``'s points, else all), smallest design first."""
    out = pathlib.Path(out)
    if todo is not None:
        rows = [finished(out / p["key"]) for p in todo]
    else:
        rows = [finished(d) for d in sorted(out.iterdir()) if d.is_dir()] if out.exists() else []
    order = {t: i for i, t in enumerate(TOPOLOGIES)}
    return sorted((r for r in rows if r), key=lambda r: (order.get(r["topology"], 99), r["bits"],
                                                         -r["target_ii"], r["board"]))


def row_cells(r):
    """The table's cells of one result: design, board, LUT4, FF, BRAM, DSP, Fmax, II, images/s at
    Fmax, MACs per cycle per 1000 LUT4, FINN's figure for the topology."""
    design = f"{r['topology'].upper()} w{r['bits']}a{r['bits']} (target II {r['target_ii']})"
    finn = FINN.get(r["topology"], "-")
    if r["status"] != "ok":
        return [design, r["board"], r["status"] + ": " + (r.get("reason") or ""), "", "", "", "", "", "", "", finn]
    rep = r["report"]
    u, y = rep["utilization"], rep.get("yosys") or {}
    if rep["family"] == "ice40":
        luts = u.get("ICESTORM_LC", [0])[0]
        ffs = y.get("ffs")
        bram = u.get("ICESTORM_RAM", [0])[0]
        dsp = u.get("ICESTORM_DSP", [0])[0]
        spram = u.get("ICESTORM_SPRAM", [0])[0]
        bram = f"{bram}" + (f" + {spram} SPRAM" if spram else "")
    else:
        luts = u.get("TRELLIS_COMB", [0])[0]
        ffs = u.get("TRELLIS_FF", [None])[0]
        bram = u.get("DP16KD", [0])[0]
        dsp = u.get("MULT18X18D", [0])[0]
    fmax, ii = rep.get("fmax_mhz"), r["ii"]
    missed = "" if rep.get("timing_met") else " (clock missed)"
    ips = fmax * 1e6 / ii if fmax else None
    density = r["macs"] / ii / (luts / 1000) if luts else None
    return [design, r["board"], f"{luts:,}", f"{ffs:,}" if ffs is not None else "-", str(bram), str(dsp),
            f"{fmax:.1f}{missed}" if fmax else "-", f"{ii:,}", f"{ips:,.0f}" if ips else "-",
            f"{density:.1f}" if density else "-", finn]


HEADER = ["design", "board", "LUT4", "FF", "BRAM", "DSP", "Fmax MHz", "II (cycles)", "images/s at Fmax",
          "MACs/cycle/kLUT4", "FINN published (same topology)"]

CAPTION = (
    "Random weights quantized by qfab's PTQ on random calibration data: resources and rates do not depend "
    "on accuracy. Resources are nextpnr's for the whole bitstream (accelerator plus host link and board top): "
    "LUT4 is nextpnr's TRELLIS_COMB on the ECP5 (LUT4s and carry halves) and ICESTORM_LC on the iCE40 "
    "(logic cells: LUT4 + FF + carry); FF is TRELLIS_FF on the ECP5 and Yosys's count on the iCE40; BRAM is "
    "DP16KD (18 kbit) on the ECP5 and SB_RAM40_4K (4 kbit) on the iCE40. Fmax is nextpnr's after routing "
    "for the board's clock (ULX3S 25 MHz, iCEBreaker 12 MHz unless --freq); II is cycles per inference "
    "(the build's initiation interval); MACs/cycle/kLUT4 = MACs per inference / II / (LUT4 / 1000).")


def finn_derived():
    """Lines derived from FINN's published rates alone: cycles per image and MACs per cycle at 200 MHz."""
    macs = {t: _macs_mlp(MLPS[t]) for t in ("tfc", "sfc", "lfc")} | {CNV: _macs_cnv()}
    lines = [FINN_SOURCES, "MACs per inference: " + ", ".join(f"{t.upper()} {m:,}" for t, m in macs.items()) + "."]
    for t, rate in FINN_RATES.items():
        cycles = FINN_MHZ * 1e6 / rate
        lines.append(f"FINN {t.upper()}-max: {FINN_MHZ:g} MHz / {rate:,.0f} images/s = {cycles:,.1f} cycles per image; "
                     f"{macs[t]:,} MACs per image -> {macs[t] / cycles:,.0f} MACs per cycle.")
    return lines


def _macs_mlp(sizes):
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def _macs_cnv():
    """MACs of CNV as compile_time.cnv_model builds it (valid 3x3 convolutions, 2x2 pools)."""
    macs, size, cin = 0, 32, 3
    for cout in [64, 64, "pool", 128, 128, "pool", 256, 256]:
        if cout == "pool":
            size //= 2
            continue
        size -= 2
        macs += size * size * 9 * cin * cout
        cin = cout
    return macs + _macs_mlp([cin * size * size, 512, 512, 10])


def format_table(rows, markdown=False):
    cells = [HEADER] + [row_cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "|" + "|".join("---" for _ in HEADER) + "|")
        return "\n".join(lines)
    ok = [HEADER] + [row_cells(r) for r in rows if r["status"] == "ok"]
    widths = [max(len(c[i]) for c in (ok if i > 1 else cells)) for i in range(len(HEADER) - 1)]
    lines = []
    for c in cells:
        if c[3] or c is HEADER:
            lines.append("  ".join(c[i].ljust(w) for i, w in enumerate(widths)) + "  " + c[-1])
        else:                                    # not built: the reason across the table
            lines.append(f"{c[0].ljust(widths[0])}  {c[1].ljust(widths[1])}  {c[2]}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topologies", default=",".join(TOPOLOGIES), help="comma-separated: " + ", ".join(TOPOLOGIES))
    p.add_argument("--bits", default=",".join(map(str, BITS)), help="comma-separated bit widths (w = a)")
    p.add_argument("--boards", default=",".join(BOARDS), help="comma-separated boards (ulx3s-85f or ulx3s_85f)")
    p.add_argument("--ii", help="comma-separated target intervals instead of each topology's folds "
                                f"({', '.join(f'{t}: {a}, {b}' for t, (a, b) in FOLDS.items() if t in TOPOLOGIES)})")
    p.add_argument("--freq", type=float, help="clock in MHz (default: the board's, as qfab bitstream)")
    p.add_argument("--out", default=str(OUT), help="output folder (one subfolder per design point)")
    p.add_argument("--jobs", type=int, default=1, help="points built at once, in separate processes")
    p.add_argument("--force", action="store_true", help="redo finished points")
    p.add_argument("--list", action="store_true", help="list the selected points and whether they are done")
    p.add_argument("--table", action="store_true", help="print the table from cached results only")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args(argv)
    from qfab.boards.registry import get_board
    topologies = [t.strip().lower() for t in args.topologies.split(",") if t.strip()]
    for t in topologies:
        if t not in TOPOLOGIES:
            p.error(f"unknown topology {t!r}; known: {', '.join(TOPOLOGIES)}")
    boards = [board_name(b) for b in args.boards.split(",") if b.strip()]
    for b in boards:
        get_board(b)
    todo = points(topologies, [int(b) for b in args.bits.split(",")], boards,
                  [int(i) for i in args.ii.split(",")] if args.ii else None)
    if args.list:
        for pt in todo:
            r = finished(pathlib.Path(args.out) / pt["key"])
            print(f"{pt['key']:<32} {r['status'] if r else 'to do'}")
        return 0
    if args.table:
        rows = cached_results(args.out, todo)
    else:
        rows = [r for r in run_points(todo, args.out, jobs=args.jobs, force=args.force, freq_mhz=args.freq,
                                      say=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))
                if r["status"] in ("ok", "does not fit")]
        print()
    print(format_table(rows, args.markdown))
    print()
    print(CAPTION)
    for line in finn_derived():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
