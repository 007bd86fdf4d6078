"""Simulation speed: the digits MLP and CNN accelerators in Verilator and in Amaranth's simulator.

    python bench/simulate.py [--images 2000] [--pysim-images 3]

For each design: Verilator build time (cold, then cached), simulated cycles per second and
images per second (the harness streams from preloaded memories; the fixed cost of starting the
simulator is measured with one image and subtracted), and the same design's speed in Amaranth's
Python simulator for comparison. Every run is checked bit-exact against the reference.
"""

import argparse
import os
import tempfile
import time

import numpy as np
from amaranth.sim import Simulator

from qfab.compiler import reference
from qfab.compiler.compile import compile_graph
from qfab.compiler.datasets import digits
from qfab.compiler.estimate import cost_luts
from qfab.compiler.folding import choose_folding, stages_of
from qfab.compiler.load import load_graph
from qfab.compiler.lowering import build_top, plan_graph
from qfab.compiler.ptq import QuantConfig
from qfab.sim.accelerator import load_build, simulate

DESIGNS = (("digits_mlp", "flat", 64), ("digits_cnn", "NCHW", 1152))


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / (name + ".onnx"))


def pysim_speed(graph, ii, codes):
    """Cycles per second of the same Dataflow top in Amaranth's simulator."""
    stages = stages_of(graph)
    folds = choose_folding(stages, target_ii=ii, cost=cost_luts)
    plan = plan_graph(graph, folds, {s.name: s for s in stages})
    top = build_top(plan)
    i, o = plan.input, plan.output
    flat = codes.reshape(-1, i.per_beat)
    n_out = len(codes) * o.elements // o.per_beat
    got, cycles = [], [0]

    async def bench(ctx):
        ctx.set(top.o.ready, 1)
        k = 0
        while len(got) < n_out:
            if k < len(flat):
                ctx.set(top.i.valid, 1)
                ctx.set(top.i.payload, [int(v) for v in flat[k]])
            else:
                ctx.set(top.i.valid, 0)
            _, _, i_ready, o_valid, o_payload = await ctx.tick().sample(top.i.ready, top.o.valid, top.o.payload)
            cycles[0] += 1
            if k < len(flat) and i_ready:
                k += 1
            if o_valid:
                got.append([int(o_payload[j]) for j in range(o.per_beat)])

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    t = time.perf_counter()
    sim.run()
    dt = time.perf_counter() - t
    outputs = np.array(got).reshape(len(codes), *o.shape)
    return cycles[0] / dt, len(codes) / dt, outputs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--pysim-images", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for name, layout, ii in DESIGNS:
        x_train, _, x_test, _ = digits(layout)
        graph = load_graph(_bundled(name), x_train, QuantConfig(w_bits=4, a_bits=4))
        x = np.resize(np.concatenate([x_train, x_test]), (args.images,) + x_test.shape[1:])
        codes = reference.quantize_inputs(graph, x)
        want = reference.run(graph, codes)[graph.outputs[0]]
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["QFAB_CACHE"] = os.path.join(tmp, "cache")      # a cold build
            compile_graph(graph, tmp + "/b", target_ii=ii, log=lambda *a: None)
            build = load_build(tmp + "/b")
            print(f"{name}: building with Verilator ...", flush=True)
            one = simulate(build, codes[:1], log=lambda *a: None)
            cold = one.build_seconds
            one = simulate(build, codes[:1], log=lambda *a: None)
            big = simulate(build, codes, log=lambda *a: None)
            assert np.array_equal(big.outputs.reshape(want.shape), want), "Verilator run is not bit-exact"
            dt = big.run_seconds - one.run_seconds
            v_cps = (big.cycles - one.cycles) / dt
            v_ips = (len(codes) - 1) / dt
            print(f"{name}: Amaranth simulator on {args.pysim_images} images ...", flush=True)
            p_cps, p_ips, p_out = pysim_speed(graph, ii, codes[:args.pysim_images])
            assert np.array_equal(p_out.reshape(want[:args.pysim_images].shape), want[:args.pysim_images])
            rows.append((name, ii, cold, one.build_seconds, big.cycles, v_cps, v_ips, p_cps, p_ips))
        os.environ.pop("QFAB_CACHE", None)
    print(f"\n{'design':<11}{'II':>6}{'build s':>9}{'cached s':>9}{'cycles':>10}{'Verilator cyc/s':>17}"
          f"{'img/s':>9}{'Amaranth cyc/s':>16}{'img/s':>8}{'speed-up':>10}")
    for name, ii, cold, warm, cyc, vc, vi, pc, pi in rows:
        print(f"{name:<11}{ii:>6}{cold:>9.1f}{warm:>9.2f}{cyc:>10}{vc:>17.3g}{vi:>9.0f}{pc:>16.3g}{pi:>8.2f}"
              f"{vc / pc:>10.0f}x")


if __name__ == "__main__":
    main()
