"""Quantization-aware training on digits: trained vs post-training quantization, sparsity vs
accuracy, and Huffman compression ratios against 32-bit floats. Needs the [train] extra.

    python bench/train.py [--epochs 40] [--seed 0]
"""

import argparse

import numpy as np

from qfab.compiler import reference
from qfab.compiler.ptq import QuantConfig, quantize
from qfab.compiler.train import digits_model, train_qat


def _ptq_accuracy(model, bits):
    fg, (x_train, _, x_test, y_test) = digits_model(model)
    x_ir = x_train.transpose(0, 2, 3, 1) if x_train.ndim == 4 else x_train
    graph = quantize(fg, x_ir, QuantConfig(w_bits=bits, a_bits=bits, calib_method="mse"))
    return float((reference.run_float(graph, x_test).argmax(-1) == y_test).mean())


def accuracy_table(epochs, seed):
    print(f"## Trained (QAT, {epochs} epochs) vs post-training quantization (calib_method='mse'), digits test set\n")
    print("| model | bits | float | PTQ | QAT (integer model) | torch/integer argmax agreement | train s |")
    print("|---|---|---|---|---|---|---|")
    for model in ("mlp", "cnn"):
        for bits in (2, 4):
            _, r = train_qat(model, bits, bits, epochs=epochs, seed=seed)
            print(f"| {model} | w{bits}a{bits} | {r['float_accuracy']:.4f} | {_ptq_accuracy(model, bits):.4f} | "
                  f"{r['accuracy']:.4f} | {r['agreement']:.4f} | {r['train_seconds']:.1f} |", flush=True)


def sparsity_tables(epochs, seed):
    per_layer = {}
    print(f"\n## Sparsity vs accuracy, w4a4 ({epochs} epochs; pruned at 40% of them, per layer)\n")
    print("| model | target | weight zeros | accuracy | Huffman ratio vs fp32 | fixed 4-bit ratio |")
    print("|---|---|---|---|---|---|")
    for model in ("mlp", "cnn"):
        for sparsity in (0.0, 0.5, 0.75, 0.9):
            _, r = train_qat(model, 4, 4, sparsity=sparsity, epochs=epochs, seed=seed)
            total = r["compression"]["total"]
            print(f"| {model} | {sparsity:.0%} | {r['weight_sparsity']:.3f} | {r['accuracy']:.4f} | "
                  f"{total['ratio']:.2f}x | {total['fixed_ratio']:.2f}x |", flush=True)
            per_layer[model, sparsity] = r["compression"]
    print("\n## Compression per layer (Huffman payload + code table, weights only, vs 32-bit floats)\n")
    print("| model | sparsity | layer | weights | zeros | entropy bits/w | Huffman bits | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for (model, sparsity), comp in per_layer.items():
        if sparsity not in (0.0, 0.75):
            continue
        for name, c in comp.items():
            print(f"| {model} | {sparsity:.0%} | {name} | {c['weights']} | {c['sparsity']:.3f} | "
                  f"{c['entropy']:.2f} | {c['huffman_bits']} | {c['ratio']:.2f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    np.set_printoptions(precision=4)
    accuracy_table(args.epochs, args.seed)
    sparsity_tables(args.epochs, args.seed)


if __name__ == "__main__":
    main()
