"""Speed of the bit-exact numpy reference on the bundled digits models.

    python bench/reference.py [--batch 1000] [--repeat 5]

Prints, per model and bit width: images per batch, best time of ``--repeat`` runs, images/s.
The goal (issue: foundation) is a batch of 1000 digits through the MLP in well under a second.
"""

import argparse
import time

import numpy as np

from qfab.compiler import reference
from qfab.compiler.datasets import digits
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import QuantConfig


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"{'model':<12}{'bits':<7}{'batch':>7}{'best ms':>10}{'images/s':>12}")
    for name, layout in (("digits_mlp", "flat"), ("digits_cnn", "NCHW")):
        x_train, _, x_test, _ = digits(layout)
        x_all = np.concatenate([x_train, x_test])
        x = np.resize(x_all, (args.batch,) + x_all.shape[1:])
        for bits in (8, 4):
            graph = load_graph(_bundled(name + ".onnx"), x_train, QuantConfig(w_bits=bits, a_bits=bits))
            codes = reference.quantize_inputs(graph, x)
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                reference.run(graph, codes)
                best = min(best, time.perf_counter() - t)
            print(f"{name:<12}{f'w{bits}a{bits}':<7}{len(x):>7}{best * 1e3:>10.2f}{len(x) / best:>12.0f}")


if __name__ == "__main__":
    main()
