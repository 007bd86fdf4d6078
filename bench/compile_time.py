"""Compile time of FINN-class networks: seconds per step and Verilog size against the MAC lanes built.

For MLPs and CNNs of FINN's shapes (TFC, SFC, LFC, CNV; and the TFC-class 784-128-64-10 of
issue 17) at w1a1 / w2a2 / w4a4, each at a full and a partial fold (a target interval), this
quantizes a float ONNX model with random weights (qfab's post-training quantization on random
calibration data: compile time and size do not depend on accuracy), compiles it with
`qfab.compiler.compile.compile_graph`, and prints per design:

* the MAC lanes instantiated (sum of PE x SIMD over the matrix stages) and MACs per inference,
* seconds: plan (folding and planning), elaborate, netlist (Amaranth netlist and RTLIL), Verilog
  (Yosys ``write_verilog``), the whole ``compile_graph`` (CPU seconds of qfab and Yosys beside
  wall seconds: on a shared machine the CPU time is the steadier number), and optionally a Verilator build
  (``--verilator``) and ``synth_ice40`` (``--yosys``),
* lines and megabytes of Verilog,

and at the end a fit of each step's time and of the Verilog lines against the lanes
(``time ~ lanes ** k``: ``k <= 1`` is "no faster than the design").

    python bench/compile_time.py                 # quick set: TFC-class at three bit widths, two folds
    python bench/compile_time.py --full          # every topology (LFC and CNV take long)
    python bench/compile_time.py --only tfc128 --bits 1 --ii 16 --verilator --yosys
    python bench/compile_time.py --json out.json

Works on older qfab versions too (then the per-step split is missing and "compile" counts every
Verilog conversion the compiler made): that is how the "before" table in docs/lowering.md was made.
"""

import argparse
import json
import math
import os
import pathlib
import resource
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# topology: (kind, layers, input shape, (full-fold II, partial-fold II) per bit width)
MLPS = {
    "tfc128": [784, 128, 64, 10],              # issue 17's TFC-class MLP (111 k MACs)
    "tfc": [784, 64, 64, 64, 10],              # FINN TFC
    "sfc": [784, 256, 256, 256, 10],           # FINN SFC
    "lfc": [784, 1024, 1024, 1024, 10],        # FINN LFC (2.9 M MACs)
}
CNV = "cnv"                                    # FINN CNV: 32x32x3, conv 64-64-pool-128-128-pool-256-256, FC 512-512-10
FOLDS = {"tfc128": (1024, 16), "tfc": (1024, 64), "sfc": (4096, 256), "lfc": (16384, 2048), "cnv": (65536, 8192)}
QUICK = ["tfc128"]


def _gemm_stack(nodes, inits, prev, sizes, rng, prefix="fc", last_relu=False):
    for i, (k, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        b = (rng.standard_normal(n) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"{prefix}{i}_w"), numpy_helper.from_array(b, f"{prefix}{i}_b")]
        nodes.append(helper.make_node("Gemm", [prev, f"{prefix}{i}_w", f"{prefix}{i}_b"], [f"{prefix}{i}"],
                                      transB=1, name=f"{prefix}{i}"))
        prev = f"{prefix}{i}"
        if i < len(sizes) - 2 or last_relu:
            nodes.append(helper.make_node("Relu", [prev], [prev + "_r"], name=f"{prefix}{i}_relu"))
            prev = prev + "_r"
    return prev


def mlp_model(sizes, seed=0):
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    out = _gemm_stack(nodes, inits, "x", sizes, rng)
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, sizes[0]])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, sizes[-1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), (sizes[0],)


def cnv_model(seed=0):
    rng = np.random.default_rng(seed)
    nodes, inits, prev, cin = [], [], "x", 3
    for i, cout in enumerate([64, 64, "pool", 128, 128, "pool", 256, 256]):
        if cout == "pool":
            nodes.append(helper.make_node("MaxPool", [prev], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2],
                                          name=f"pool{i}"))
            prev = f"pool{i}"
            continue
        w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"conv{i}_w"))
        nodes += [helper.make_node("Conv", [prev, f"conv{i}_w"], [f"conv{i}"], kernel_shape=[3, 3], name=f"conv{i}"),
                  helper.make_node("Relu", [f"conv{i}"], [f"conv{i}_r"], name=f"conv{i}_relu")]
        prev, cin = f"conv{i}_r", cout
    nodes.append(helper.make_node("Flatten", [prev], ["flat"], name="flat"))
    out = _gemm_stack(nodes, inits, "flat", [256, 512, 512, 10], rng)
    graph = helper.make_graph(nodes, "cnv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), (3, 32, 32)


def quantized(topology, bits, workdir):
    """The IR graph of ``topology`` at ``bits`` (weights and activations), via qfab's PTQ."""
    from qfab.compiler.load import load_graph
    from qfab.compiler.ptq import QuantConfig
    model, shape = cnv_model() if topology == CNV else mlp_model(MLPS[topology])
    path = pathlib.Path(workdir) / f"{topology}.onnx"
    onnx.save(model, path)
    calib = np.random.default_rng(1).random((32, *shape)).astype(np.float32)
    return load_graph(str(path), calib, QuantConfig(w_bits=bits, a_bits=bits))


class _Recorder:
    """Wraps the compiler's ``to_netlists`` (``to_verilog`` in an older qfab) to time each
    conversion (and its steps, where the compiler reports them)."""

    def __init__(self, module):
        self.name = "to_netlists" if hasattr(module, "to_netlists") else "to_verilog"
        self.module, self.original = module, getattr(module, self.name)
        self.calls, self.steps = 0, {}

    def __call__(self, top, *args, **kwargs):
        self.calls += 1
        times = {}
        try:
            return self.original(top, *args, times=times, **kwargs)
        except TypeError as e:              # an older qfab: no per-step times
            if "times" not in str(e):
                raise
            return self.original(top, *args, **kwargs)
        finally:
            for key, value in times.items():
                self.steps[key] = self.steps.get(key, 0.0) + value

    def __enter__(self):
        setattr(self.module, self.name, self)
        return self

    def __exit__(self, *exc):
        setattr(self.module, self.name, self.original)


def _cpu():
    """CPU seconds of this process and its finished children (Yosys runs as one)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def measure(graph, ii, *, verilator=False, yosys=False, log=None):
    from qfab.compiler import compile as compile_mod
    row = {}
    with tempfile.TemporaryDirectory(prefix="qfab_ct_") as tmp, _Recorder(compile_mod) as rec:
        wall, cpu = time.perf_counter(), _cpu()
        build = compile_mod.compile_graph(graph, pathlib.Path(tmp) / "b", target_ii=ii, log=log or (lambda *a: None))
        row["compile"] = time.perf_counter() - wall
        row["compile_cpu"] = _cpu() - cpu
        row["conversions"] = rec.calls
        row.update(rec.steps)
        known = sum(rec.steps.values())
        if known:
            row["plan"] = row["compile"] - known     # folding, planning, estimates, writing the folder
        manifest = build.manifest
        verilog = build.verilog
        row["lines"] = len(verilog.splitlines())
        row["mb"] = len(verilog.encode()) / 1e6
        row["ii"] = manifest.initiation_interval
        row["lanes"] = sum((s.pe or 0) * (s.simd or 0) for s in manifest.stages if s.kind in ("mvau", "vvau"))
        if verilator:
            from qfab.sim import verilator as vl
            with tempfile.TemporaryDirectory(prefix="qfab_ct_vl_") as cache:
                old = os.environ.get("QFAB_CACHE")
                os.environ["QFAB_CACHE"] = cache
                try:
                    t = time.perf_counter()
                    i, o = manifest.input, manifest.output
                    vl.build(verilog, i.per_beat * i.bits, o.per_beat * o.bits, 1024, 1024, log=lambda *a: None,
                             **({"activity_bits": manifest.activity_bits} if hasattr(manifest, "activity_bits") else {}))
                    row["verilator"] = time.perf_counter() - t
                finally:
                    if old is None:
                        os.environ.pop("QFAB_CACHE", None)
                    else:
                        os.environ["QFAB_CACHE"] = old
        if yosys:
            from qfab.boards.synth import synthesize
            res = synthesize(verilog, "ice40", top="qfab_top", log=None)
            row["yosys"] = res.seconds
            row["luts"] = res.total.luts
    return row


def fit(rows, key):
    """``k`` and ``c`` of ``key ~ c * lanes ** k`` over rows that have both (least squares in logs)."""
    pts = [(math.log(r["lanes"]), math.log(r[key])) for r in rows if r.get(key) and r.get("lanes")]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return None
    xs, ys = np.array(pts).T
    k, logc = np.polyfit(xs, ys, 1)
    return k, math.exp(logc)


COLUMNS = [("design", "{}"), ("bits", "w{0}a{0}"), ("II", "{}"), ("lanes", "{}"), ("MACs", "{:,}"),
           ("plan", "{:.1f}"), ("elaborate", "{:.1f}"), ("netlist", "{:.1f}"), ("verilog", "{:.1f}"),
           ("compile", "{:.1f}"), ("compile_cpu", "{:.1f}"), ("conversions", "{}"), ("verilator", "{:.1f}"),
           ("yosys", "{:.1f}"), ("luts", "{}"), ("lines", "{:,}"), ("mb", "{:.1f}")]


def table(rows):
    shown = [(name, f) for name, f in COLUMNS if any(r.get(name) is not None for r in rows)]
    cells = [[name for name, _ in shown]]
    for r in rows:
        cells.append([f.format(r[name]) if r.get(name) is not None else "-" for name, f in shown])
    widths = [max(len(row[c]) for row in cells) for c in range(len(shown))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="every topology (LFC and CNV take long)")
    p.add_argument("--only", help="comma-separated topologies: " + ", ".join([*MLPS, CNV]))
    p.add_argument("--bits", default="1,2,4", help="comma-separated bit widths (default 1,2,4)")
    p.add_argument("--ii", type=int, help="one target interval instead of each topology's two folds")
    p.add_argument("--verilator", action="store_true", help="also time a Verilator build of each design")
    p.add_argument("--yosys", action="store_true", help="also time synth_ice40 of each design (and count LUTs)")
    p.add_argument("--json", help="write the rows to this file")
    p.add_argument("-v", "--verbose", action="store_true", help="show the compiler's progress lines")
    args = p.parse_args(argv)
    topologies = args.only.split(",") if args.only else ([*MLPS, CNV] if args.full else QUICK)
    bits_list = [int(b) for b in args.bits.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="qfab_ct_models_") as work:
        for topology in topologies:
            if topology not in MLPS and topology != CNV:
                p.error(f"unknown topology {topology!r}")
            for bits in bits_list:
                graph = quantized(topology, bits, work)
                from qfab.compiler.ops import op_for
                macs = sum(op_for(n).macs(graph, n) for n in graph.nodes)
                for ii in ([args.ii] if args.ii else FOLDS[topology]):
                    print(f"{topology} w{bits}a{bits} target II {ii} ...", file=sys.stderr, flush=True)
                    row = {"design": topology, "bits": bits, "MACs": int(macs), "target_ii": ii}
                    row.update(measure(graph, ii, verilator=args.verilator, yosys=args.yosys,
                                       log=(lambda *a: print(*a, file=sys.stderr)) if args.verbose else None))
                    row["II"] = row.pop("ii")
                    rows.append(row)
                    print(table([row]).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(rows))
    print()
    for key in ("elaborate", "netlist", "verilog", "compile", "compile_cpu", "verilator", "yosys", "lines"):
        f = fit(rows, key)
        if f is not None:
            print(f"{key:>12} ~ lanes ** {f[0]:.2f}  ({f[1]:.3g} at one lane)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
