"""Bitstreams of the digits MLP and CNN at w8a8 and w4a4 on each board, folded by ``--board``:
resources used (next to the lowering's estimates), Fmax, and inferences per second at Fmax.

    python bench/boards.py [--boards icebreaker,ulx3s_85f] [--models mlp,cnn] [--bits 8,4]

When a design folded from the estimates does not fit, the script doubles the initiation interval
and tries again, and says so (a measure of how optimistic the estimates were). Results are kept in
bench/results/boards.json. A full run takes 15-30 minutes (16 place-and-route runs).
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

from qfab.boards.bitstream import build_bitstream
from qfab.boards.registry import BOARDS, budget_for, get_board
from qfab.compiler.compile import compile_graph
from qfab.compiler.errors import QfabError
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import QuantConfig
from qfab.datasets import digits

MODELS = {"mlp": ("digits_mlp.onnx", "flat"), "cnn": ("digits_cnn.onnx", "NCHW")}
RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "boards.json"


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


def run_one(model, bits, board, work):
    file, layout = MODELS[model]
    x_train = digits(layout)[0]
    graph = load_graph(_bundled(file), x_train, QuantConfig(w_bits=bits, a_bits=bits, calib_method="mse"))
    folder = work / f"{model}_w{bits}_{board.name}"
    manifest = compile_graph(graph, folder, budget=budget_for(board), log=lambda *a: None)
    retries = 0
    while True:
        try:
            report = build_bitstream(folder, board.name, log=lambda m: print("   " + m, flush=True))
            break
        except QfabError as e:
            if "does not fit" not in str(e) or retries >= 3:
                raise
            retries += 1
            ii = manifest["initiation_interval"] * 2
            print(f"   does not fit ({str(e).split(':')[1].split('.')[0].strip()}); retrying at II {ii}", flush=True)
            manifest = compile_graph(graph, folder, target_ii=ii, family=board.family, log=lambda *a: None)
    est = manifest["estimates"]["total"]
    ii = manifest["initiation_interval"]
    return {"model": model, "bits": bits, "board": board.name, "ii": ii, "refolds": retries,
            "utilization": {k: list(v) for k, v in report.utilization.items()}, "yosys": report.yosys,
            "estimate": est, "fmax_mhz": report.fmax_mhz, "clock_mhz": report.requested_mhz,
            "inferences_per_s_at_fmax": report.fmax_mhz * 1e6 / ii if report.fmax_mhz else None,
            "tool_seconds": report.seconds.get("tools")}


def print_table(rows):
    print(f"\n{'model':<6}{'bits':<6}{'board':<12}{'II':>6}{'LUT/LC used':>12}{'est.':>7}{'FF':>7}{'est.':>7}"
          f"{'BRAM':>6}{'est.':>6}{'DSP':>5}{'est.':>5}{'Fmax MHz':>10}{'inf/s @Fmax':>13}{'tools s':>9}")
    for r in rows:
        if "failed" in r:
            print(f"{r['model']:<6}{'w%da%d' % (r['bits'], r['bits']):<6}{r['board']:<12}  {r['failed']}")
            continue
        fam = get_board(r["board"]).family
        u, y, e = r["utilization"], r["yosys"], r["estimate"]
        luts = u["ICESTORM_LC"][0] if fam == "ice40" else u["TRELLIS_COMB"][0]
        ffs = y.get("ffs", 0)
        bram = (u.get("ICESTORM_RAM") or u.get("DP16KD") or [0])[0]
        block = 4096 if fam == "ice40" else 18432
        dsp = (u.get("ICESTORM_DSP") or u.get("MULT18X18D") or [0])[0]
        ips = r["inferences_per_s_at_fmax"]
        print(f"{r['model']:<6}{'w%da%d' % (r['bits'], r['bits']):<6}{r['board']:<12}{r['ii']:>6}"
              f"{luts:>12}{e['luts']:>7}{ffs:>7}{e['ffs']:>7}{bram:>6}{-(-e['bram_bits'] // block):>6}"
              f"{dsp:>5}{e['dsps']:>5}{r['fmax_mhz'] or 0:>10.1f}{ips or 0:>13,.0f}{r['tool_seconds'] or 0:>9.0f}"
              + (f"  (refolded {r['refolds']}x)" if r["refolds"] else ""))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boards", default=",".join(BOARDS))
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--bits", default="8,4")
    p.add_argument("--table", action="store_true", help="print the saved results only")
    args = p.parse_args(argv)
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    if args.table:
        print_table(saved)
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="qfab_bench_boards_") as tmp:
        for board_name in args.boards.split(","):
            board = get_board(board_name)
            for model in args.models.split(","):
                for bits in (int(b) for b in args.bits.split(",")):
                    print(f"== {model} w{bits}a{bits} on {board.name}", flush=True)
                    t = time.perf_counter()
                    try:
                        rows.append(run_one(model, bits, board, pathlib.Path(tmp)))
                    except QfabError as e:
                        print(f"   FAILED: {e}", flush=True)
                        rows.append({"model": model, "bits": bits, "board": board.name,
                                     "failed": str(e).split(";")[0]})
                    print(f"   done in {time.perf_counter() - t:.0f} s", flush=True)
                    keep = [r for r in saved if (r["model"], r["bits"], r["board"]) != (model, bits, board.name)]
                    saved = keep + [rows[-1]]
                    RESULTS.parent.mkdir(exist_ok=True)
                    RESULTS.write_text(json.dumps(saved, indent=1))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
