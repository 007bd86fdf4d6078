"""The post-training methods of the papers on digits: multipoint quantization and mixed precision.

    python bench/papers_ptq.py [--out bench/results]

1. Multipoint (shared/papers/002): accuracy of plain per-channel rounding vs multipoint at budgets
   0.05, 0.1, 0.25 (and 1.0) at 2, 3 and 4 weight bits (8-bit activations), with the weight memory
   (bits actually used by non-zero points; and as stored with a uniform point count) and the cycle
   factor (weight passes of the slowest layer).
2. Mixed precision (shared/papers/000): accuracy vs weight-memory budget, automatic per-layer bits
   vs uniform bits at the same budget; saved as a plot (mixed_precision.png).
"""

import argparse
import pathlib

from qfab.compiler import reference
from qfab.compiler.datasets import digits
from qfab.compiler.frontends.onnx_import import import_onnx
from qfab.compiler.mixed import mixed_quantize, weight_memory_cost
from qfab.compiler.ptq import QuantConfig, quantize

MODELS = (("digits_mlp", "flat"), ("digits_cnn", "NCHW"))


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / (name + ".onnx"))


def _data(layout):
    x_train, y_train, x_test, y_test = digits(layout)
    if layout == "NCHW":
        return x_train.transpose(0, 2, 3, 1), x_test, y_test
    return x_train, x_test, y_test


def _acc(graph, x_test, y_test):
    return float((reference.run_float(graph, x_test).reshape(len(x_test), -1).argmax(-1) == y_test).mean())


def multipoint_table():
    print("Multipoint quantization (weights w bits, activations 8 bits, MSE calibration)")
    print(f"{'model':<11}{'w':>3}{'budget':>8}{'accuracy':>10}{'points/layer':>15}{'used kbit':>11}"
          f"{'stored kbit':>13}{'cycles x':>10}")
    for name, layout in MODELS:
        fg = import_onnx(_bundled(name))
        x_train, x_test, y_test = _data(layout)
        for bits in (2, 3, 4):
            for budget in (0.0, 0.05, 0.1, 0.25, 1.0):
                g = quantize(fg, x_train, QuantConfig(w_bits=bits, a_bits=8, calib_method="mse", multipoint=budget))
                mats = [n for n in g.nodes if hasattr(n, "points")]
                used = sum(int((n.multipliers != 0).sum()) * n.fan_in * bits for n in mats)
                stored = sum(n.weights.size * bits for n in mats)
                cyc = max(n.points for n in mats)
                print(f"{name:<11}{bits:>3}{budget:>8.2f}{100 * _acc(g, x_test, y_test):>9.2f}%"
                      f"{'/'.join(str(n.points) for n in mats):>15}{used / 1000:>11.1f}{stored / 1000:>13.1f}{cyc:>10}")


def mixed_curves(out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    print("\nMixed precision vs uniform bits at the same weight-memory budget (activations 8 bits)")
    print(f"{'model':<11}{'budget':>8}{'mixed':>9}{'uniform':>9}{'uniform bits':>14}  bits per layer")
    for ax, (name, layout) in zip(axes, MODELS):
        fg = import_onnx(_bundled(name))
        x_train, x_test, y_test = _data(layout)
        cost = weight_memory_cost(fg)
        layers = [n.name for n in fg.nodes if n.kind in ("Dense", "Conv2d")]
        full = sum(cost(layer, 8) for layer in layers)
        uniform = {b: _acc(quantize(fg, x_train, QuantConfig(w_bits=b, a_bits=8, calib_method="mse")), x_test, y_test)
                   for b in (2, 3, 4, 5, 6, 8)}
        budgets = [25, 30, 35, 40, 45, 50, 56, 62.5, 75, 100]
        mixed = []
        for pct in budgets:
            g, bits, _ = mixed_quantize(fg, x_train, f"{pct}%", QuantConfig(a_bits=8, calib_method="mse"))
            mixed.append(_acc(g, x_test, y_test))
            ub = max(b for b in uniform if b * full / 8 <= pct / 100 * full + 1e-9)
            print(f"{name:<11}{pct:>7.1f}%{100 * mixed[-1]:>8.2f}%{100 * uniform[ub]:>8.2f}%{ub:>14}  "
                  + ",".join(str(bits[layer]) for layer in layers))
        ax.plot(budgets, [100 * a for a in mixed], "o-", label="mixed (exact knapsack)")
        ub_curve = [100 * uniform[max(b for b in uniform if b / 8 * 100 <= p + 1e-9)] for p in budgets]
        ax.step(budgets, ub_curve, where="post", label="uniform bits within budget")
        ax.set_title(name)
        ax.set_xlabel("weight memory budget (% of 8-bit)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / "mixed_precision.png"
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    multipoint_table()
    mixed_curves(out)


if __name__ == "__main__":
    main()
