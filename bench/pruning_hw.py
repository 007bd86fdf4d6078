"""Synthesis of pruned layers: with constant (``LOGIC``) weights, zero weights cost no logic.

Trains the digits MLP (64-64-32-10) at w4a4 and w2a2 pruned to 0 / 50 / 75 / 90% zeros per
layer (`qfab.compiler.train.train_qat`, 40 epochs; or, with ``--train 0``, magnitude-prunes the
post-training-quantized model's integer weights, ties at random), builds every layer's MVAU
with ``LOGIC`` weights fully unrolled (``pe = N``, ``simd = K``) and folded (``--folds``: ``N`` fold steps per
layer), synthesizes each with Yosys ``synth_ice40`` one after the other, and prints LUTs, FFs and
carries (the sum over the three MVAUs) against the unpruned model. The folded rows also show the
unpruned model with its weights in block RAM (``BLOCK``, what ``AUTO`` picks for these layers).

    python bench/pruning_hw.py [--bits 4,2] [--folds unrolled,16] [--sparsity 0,0.5,0.75,0.9]
                               [--train EPOCHS] [--out bench/results/pruning_hw.json]

The unrolled unpruned w4a4 MLP is the slow one: its first layer (4096 constant products) takes
Yosys about two minutes; the whole default run about twenty.
"""

import argparse
import dataclasses
import json
import pathlib
import sys
from importlib.resources import files

import numpy as np

from qfab.boards import synth
from qfab.compiler import lowering, reference
from qfab.compiler.datasets import digits
from qfab.compiler.folding import Fold, stages_of
from qfab.compiler.ir import Dense
from qfab.compiler.load import load_graph
from qfab.compiler.ops import op_for
from qfab.compiler.ptq import QuantConfig
from qfab.hw.weights import MemoryKind

RESULTS = pathlib.Path(__file__).parent / "results"


def synthesize(component, timeout=3600):
    """iCE40 cell counts of a component (``luts``, ``ffs``, ``carries``, ``bram``, ``dsps``) and
    seconds."""
    # -dsp as in the board flow: requantization multiplies go to SB_MAC16s (the MAC arrays
    # write no `*`), so the LUTs counted are the weight-dependent logic and its control
    result = synth.synthesize(component, "ice40", options="-dsp", timeout=timeout, log=None)
    cells = result.total
    return {"luts": cells.luts, "ffs": cells.ffs, "carries": cells.carries, "bram": cells.bram,
            "dsps": cells.dsps, "seconds": round(result.seconds, 1)}


def prune_graph(graph, sparsity, seed=0):
    """``graph`` with each Dense layer's ``round(sparsity * size)`` smallest integer weights set
    to zero (ties broken at random); layers with more zeros already keep them."""
    rng = np.random.default_rng(seed)
    nodes = []
    for node in graph.nodes:
        if isinstance(node, Dense):
            w = np.array(node.weights)
            flat = w.reshape(-1)
            order = np.lexsort((rng.random(flat.size), np.abs(flat)))
            flat[order[:int(round(sparsity * flat.size))]] = 0
            node = dataclasses.replace(node, weights=w)
        nodes.append(node)
    return graph.replace(nodes=tuple(nodes))


def models(bits, sparsities, train_epochs):
    """``{sparsity: (graph, test accuracy)}`` for the digits MLP at ``w{bits}a{bits}``."""
    x_train, _, x_test, y_test = digits("flat")

    def accuracy(graph):
        return float((reference.run_float(graph, x_test).argmax(-1) == y_test).mean())

    out = {}
    if train_epochs:
        from qfab.compiler.train import train_qat
        for s in sparsities:
            graph, report = train_qat("mlp", bits, bits, sparsity=s, epochs=train_epochs)
            out[s] = graph, report["accuracy"]
        return out
    graph = load_graph(files("qfab.compiler") / "data" / "digits_mlp.onnx", x_train,
                       QuantConfig(w_bits=bits, a_bits=bits, calib_method="mse"))
    for s in sparsities:
        pruned = prune_graph(graph, s)
        out[s] = pruned, accuracy(pruned)
    return out


def fold_for(n, k, steps):
    """``Fold`` of an ``n x k`` layer with ``steps`` fold steps (or the most below), neuron and
    synapse folds as even as possible; ``None`` steps: fully unrolled."""
    if steps is None:
        return Fold(pe=n, simd=k)
    best = max(((nf, sf) for nf in range(1, n + 1) if n % nf == 0
                for sf in range(1, k + 1) if k % sf == 0 and nf * sf <= steps),
               key=lambda f: (f[0] * f[1], min(f)))
    return Fold(pe=n // best[0], simd=k // best[1])


def mvaus(graph, steps, kind):
    """One MVAU per Dense layer, built by the compiler's lowering with ``kind`` weights."""
    works = {s.name: s for s in stages_of(graph)}
    for node in graph.nodes:
        if isinstance(node, Dense):
            fold = fold_for(node.out_channels, node.fan_in, steps)
            lw = lowering.Lowering(graph, lowering.WeightPolicy("engine"))
            stage = op_for(node).mvau(lw, node, fold, works[node.name])
            stage = dataclasses.replace(stage, params={**stage.params, "weight_memory": kind.value})
            yield node, fold, lowering.stage_component(stage)


def zeros(graph):
    w = np.concatenate([n.weights.reshape(-1) for n in graph.nodes if isinstance(n, Dense)])
    return float((w == 0).mean())


def measure(graph, steps, kind, log):
    layers = []
    for node, fold, top in mvaus(graph, steps, kind):
        r = synthesize(top)
        log(f"    {node.name} pe={fold.pe} simd={fold.simd}: {r['luts']} LUTs, {r['ffs']} FFs, "
            f"{r['carries']} carries, {r['bram']} BRAMs, {r['dsps']} DSPs ({r['seconds']} s)")
        layers.append({"layer": node.name, "pe": fold.pe, "simd": fold.simd, **r})
    total = {key: sum(layer[key] for layer in layers)
             for key in ("luts", "ffs", "carries", "bram", "dsps", "seconds")}
    return {**total, "layers": layers}


def run(bits_list, fold_list, sparsities, train_epochs, log=print):
    results = []
    for bits in bits_list:
        graphs = models(bits, sparsities, train_epochs)
        for steps in fold_list:
            label = "unrolled" if steps is None else f"{steps} steps"
            runs = [(s, MemoryKind.LOGIC) for s in sparsities]
            if steps is not None:
                runs.append((sparsities[0], MemoryKind.BLOCK))
            for s, kind in runs:
                graph, acc = graphs[s]
                log(f"w{bits}a{bits} {label} sparsity {s:.0%} {kind.value}:")
                r = measure(graph, steps, kind, log)
                results.append({"bits": bits, "folding": label, "target": s,
                                "weights": kind.value, "zeros": zeros(graph),
                                "accuracy": acc, **r})
    return results


def print_table(results):
    print("\n| bits | folding | weights | target | zeros | accuracy | LUTs | FFs | carries "
          "| BRAMs | DSPs | LUTs vs 0% |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    base = {(r["bits"], r["folding"]): r["luts"] for r in results
            if r["weights"] == "logic" and r["target"] == min(x["target"] for x in results)}
    for r in results:
        ref = base[r["bits"], r["folding"]]
        print(f"| w{r['bits']}a{r['bits']} | {r['folding']} | {r['weights']} | {r['target']:.0%} "
              f"| {r['zeros']:.3f} | {r['accuracy']:.4f} | {r['luts']} | {r['ffs']} "
              f"| {r['carries']} | {r['bram']} | {r['dsps']} | {r['luts'] / ref:.2f}x |")


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_abs, ax_rel) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (bits, folding) in dict.fromkeys((r["bits"], r["folding"]) for r in results):
        rows = [r for r in results if (r["bits"], r["folding"]) == (bits, folding)
                and r["weights"] == "logic"]
        x = [100 * r["zeros"] for r in rows]
        y = [r["luts"] for r in rows]
        style = "-o" if folding == "unrolled" else "--s"
        line, = ax_abs.plot(x, y, style, label=f"w{bits}a{bits}, {folding}")
        ax_rel.plot(x, [v / y[0] for v in y], style, color=line.get_color())
        for r in results:
            if (r["bits"], r["folding"], r["weights"]) == (bits, folding, "block"):
                ax_abs.plot([100 * r["zeros"]], [r["luts"]], "x", color=line.get_color(),
                            markersize=9)
    zs = np.linspace(min(100 * r["zeros"] for r in results), 100, 50)
    ax_rel.plot(zs, (100 - zs) / (100 - zs[0]), ":", color="grey", label="nonzero weights")
    ax_abs.set(xlabel="zero weights (%)", ylabel="LUTs (iCE40, 3 MVAUs)", yscale="log",
               title="digits MLP, LOGIC weights (x: dense in block RAM)")
    ax_rel.set(xlabel="zero weights (%)", ylabel="LUTs / LUTs at 0% pruning",
               title="relative to the unpruned model")
    ax_abs.legend(fontsize=8)
    ax_rel.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", default="4,2", help="comma-separated w/a widths (default 4,2)")
    parser.add_argument("--folds", default="unrolled,16",
                        help="comma-separated: 'unrolled' or fold steps per layer")
    parser.add_argument("--sparsity", default="0,0.5,0.75,0.9")
    parser.add_argument("--train", type=int, default=40, metavar="EPOCHS",
                        help="epochs of pruned QAT (`qfab train`, needs torch; default 40); "
                             "0: magnitude-prune the PTQ model's integer weights instead")
    parser.add_argument("--out", default=str(RESULTS / "pruning_hw.json"))
    args = parser.parse_args(argv)
    bits_list = [int(b) for b in args.bits.split(",")]
    fold_list = [None if f == "unrolled" else int(f) for f in args.folds.split(",")]
    sparsities = sorted(float(s) for s in args.sparsity.split(","))
    results = run(bits_list, fold_list, sparsities, args.train, log=lambda s: print(s, flush=True))
    print_table(results)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    plot(results, out.with_suffix(".png"))
    print(f"\n{out}, {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
