"""Bitstreams of the digits MLP and CNN at w8a8 and w4a4 on each board, folded by ``--board``:
resources used (next to the lowering's estimates), Fmax, and inferences per second at Fmax.

    python bench/boards.py [--boards icebreaker,ulx3s_85f] [--models mlp,cnn] [--bits 8,4]

When a design folded from the estimates does not fit, the script doubles the initiation interval
and tries again, and says so (a measure of how optimistic the estimates were). Results are kept in
bench/results/boards.json and the build folders (with the tools' reports, which
`bench/calibrate_fmax.py` learns the clock model from) under bench/results/boards_builds/. A full
run takes 2-3 hours here (16 place-and-route runs; the ECP5 MLPs and CNN w8a8 28-40 minutes each).

With ``--sweep DIR`` the builds run as the points of a `qfab.sweep` (on Ray, all at once: on a
cluster with ``--address``, see docs/sweep.md; done points are cached in DIR):

    python bench/boards.py --sweep bench/results/boards_sweep [--address HEAD:6379]
"""

import argparse
import json
import pathlib
import sys
import time

from qfab.base.errors import QfabError
from qfab.boards.bitstream import build_bitstream
from qfab.boards.registry import BOARDS, budget_for, get_board
from qfab.compiler.compile import compile_graph
from qfab.compiler.datasets import digits
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import QuantConfig

MODELS = {"mlp": ("digits_mlp.onnx", "flat"), "cnn": ("digits_cnn.onnx", "NCHW")}
RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "boards.json"
BUILDS = RESULTS.parent / "boards_builds"


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


def run_one(model, bits, board, work, freq_mhz=None):
    file, layout = MODELS[model]
    x_train = digits(layout)[0]
    graph = load_graph(_bundled(file), x_train, QuantConfig(w_bits=bits, a_bits=bits, calib_method="mse"))
    folder = work / f"{model}_w{bits}_{board.name}"
    manifest = compile_graph(graph, folder, budget=budget_for(board), log=lambda *a: None).manifest
    retries = 0
    while True:
        try:
            report = build_bitstream(folder, board.name, freq_mhz, log=lambda m: print("   " + m, flush=True))
            break
        except QfabError as e:
            if "does not fit" not in str(e) or retries >= 3:
                raise
            retries += 1
            ii = manifest.initiation_interval * 2
            print(f"   does not fit ({str(e).split(':')[1].split('.')[0].strip()}); retrying at II {ii}", flush=True)
            manifest = compile_graph(graph, folder, target_ii=ii, family=board.family, log=lambda *a: None).manifest
    est = manifest.estimates.total.as_dict()
    ii = manifest.initiation_interval
    return {"model": model, "bits": bits, "board": board.name, "ii": ii, "refolds": retries,
            "utilization": {k: list(v) for k, v in report.utilization.items()}, "yosys": report.yosys.as_dict() if report.yosys else {},
            "estimate": est, "fmax_mhz": report.fmax_mhz, "clock_mhz": report.requested_mhz,
            "inferences_per_s_at_fmax": report.fmax_mhz * 1e6 / ii if report.fmax_mhz else None,
            "tool_seconds": report.seconds.get("tools")}


def print_table(rows):
    """A markdown table: what nextpnr used against the estimate (the accelerator's, plus the board
    top's reserve, as `qfab bitstream` prints it), Fmax and inferences per second."""
    print("\n| model | board | II | logic used / est. | FFs used / est. | BRAM used / est. | DSP used / est. "
          "| clock | Fmax | inferences/s at Fmax | tools |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = f"{r['model']} w{r['bits']}a{r['bits']}"
        if "failed" in r:
            print(f"| {name} | {r['board']} | {r['failed']} ||||||||")
            continue
        board = get_board(r["board"])
        fam = board.family
        u, y, e, top = r["utilization"], r["yosys"], r["estimate"], board.top_reserve
        if fam == "ice40":
            logic = f"{u['ICESTORM_LC'][0]} LC / {round(e.get('logic_cells', e['luts'])) + top['logic_cells']}"
        else:
            logic = f"{u['TRELLIS_COMB'][0]} LUT4 / {e['luts'] + top['luts']}"
        bram = (u.get("ICESTORM_RAM") or u.get("DP16KD") or [0])[0]
        dsp = (u.get("ICESTORM_DSP") or u.get("MULT18X18D") or [0])[0]
        blocks = -(-e["bram_bits"] // board.block_bits) + top["bram_blocks"]
        met = "" if (r["fmax_mhz"] or 0) >= r["clock_mhz"] else " (missed)"
        ips = r["inferences_per_s_at_fmax"]
        print(f"| {name} | {r['board']} | {r['ii']} | {logic} | {y.get('ffs', 0)} / {e['ffs'] + top['ffs']} "
              f"| {bram} / {blocks} | {dsp} / {e['dsps']} | {r['clock_mhz']:g} MHz | {r['fmax_mhz'] or 0:.1f} MHz{met} "
              f"| {ips or 0:,.0f} | {r['tool_seconds'] or 0:.0f} s |"
              + (f" (refolded {r['refolds']}x)" if r["refolds"] else ""))


def sweep_rows(boards, models, bits, folder, address=None):
    """Every build as a point of a `qfab.sweep` (bitstreams, refolded up to 3 times), in this
    script's row format."""
    import numpy as np

    from qfab import sweep
    jobs = []
    for model in models:
        file, layout = MODELS[model]
        path = pathlib.Path(_bundled(file))
        inputs = sweep.Inputs(path.name, path.read_bytes(), np.asarray(digits(layout)[0]))
        jobs += [sweep.Job(inputs, point, sweep.Options(bitstream=True, calib_method="mse", refolds=3))
                 for point in sweep.grid(boards, bits)]
    names = {MODELS[m][0]: m for m in models}
    rows = []
    for r in sweep.run_points(jobs, folder, address=address, log=lambda m: print(m, flush=True)):
        model = names[r["model"]]
        if r["status"] != "ok":
            rows.append({"model": model, "bits": r["bits"], "board": r["board"], "failed": r["error"].split(";")[0]})
            continue
        report = json.loads((pathlib.Path(folder) / "points" / r["key"] / "result.json").read_text())["bitstream"]
        rows.append({"model": model, "bits": r["bits"], "board": r["board"], "ii": r["ii"],
                     "refolds": r.get("refolds") or 0, "utilization": report["utilization"],
                     "yosys": report["yosys"] or {},
                     "estimate": {k: r[k] for k in ("luts", "ffs", "dsps", "bram_bits", "logic_cells")
                                  if r.get(k) is not None},
                     "fmax_mhz": r["fmax_mhz"], "clock_mhz": r["clock_mhz"],
                     "inferences_per_s_at_fmax": r["inferences_per_s_fmax"],
                     "tool_seconds": report["seconds"].get("tools")})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boards", default=",".join(BOARDS))
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--bits", default="8,4")
    p.add_argument("--freq", default="ecp5=100", metavar="FAMILY=MHZ,...",
                   help="the clock to ask per device family (default ecp5=100: the issue's target, so nextpnr "
                        "works towards it; a family not named runs at its board's own clock)")
    p.add_argument("--builds", default=str(BUILDS), help="where the build folders are kept (default "
                   f"{BUILDS.relative_to(BUILDS.parents[2])})")
    p.add_argument("--table", action="store_true", help="print the saved results only")
    p.add_argument("--out", default=str(RESULTS), help=f"results file (default {RESULTS.relative_to(RESULTS.parents[2])})")
    p.add_argument("--sweep", metavar="DIR", help="run the builds as a qfab sweep in DIR (Ray, cached points)")
    p.add_argument("--address", metavar="RAY_ADDRESS", help="with --sweep: the Ray cluster to run on")
    args = p.parse_args(argv)
    results = pathlib.Path(args.out)
    saved = json.loads(results.read_text()) if results.exists() else []
    if args.table:
        print_table(saved)
        return 0
    if args.sweep:
        rows = sweep_rows(args.boards.split(","), args.models.split(","),
                          [int(b) for b in args.bits.split(",")], args.sweep, args.address)
        done = {(r["model"], r["bits"], r["board"]) for r in rows}
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps([r for r in saved if (r["model"], r["bits"], r["board"]) not in done] + rows,
                                      indent=1))
        print_table(rows)
        return 0
    if args.address:
        p.error("--address goes with --sweep")
    try:
        freqs = {f: float(m) for f, m in (item.split("=") for item in args.freq.split(",") if item)}
    except ValueError:
        p.error(f"--freq takes FAMILY=MHZ pairs (ecp5=100,ice40=36), not {args.freq!r}")
    rows = []
    builds = pathlib.Path(args.builds)
    for board_name in args.boards.split(","):
        board = get_board(board_name)
        for model in args.models.split(","):
            for bits in (int(b) for b in args.bits.split(",")):
                print(f"== {model} w{bits}a{bits} on {board.name}", flush=True)
                t = time.perf_counter()
                try:
                    rows.append(run_one(model, bits, board, builds, freqs.get(board.family)))
                except QfabError as e:
                    print(f"   FAILED: {e}", flush=True)
                    rows.append({"model": model, "bits": bits, "board": board.name,
                                 "failed": str(e).split(";")[0]})
                print(f"   done in {time.perf_counter() - t:.0f} s", flush=True)
                keep = [r for r in saved if (r["model"], r["bits"], r["board"]) != (model, bits, board.name)]
                saved = keep + [rows[-1]]
                results.parent.mkdir(parents=True, exist_ok=True)
                results.write_text(json.dumps(saved, indent=1))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
