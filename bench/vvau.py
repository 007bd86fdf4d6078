"""VVAU size: Yosys ``synth_ice40 -dsp`` (the bitstream flow's options) against the estimate.

A depthwise 3x3 layer of 16 channels (random weights, per-channel requantization as PTQ leaves
it) at PE 1, 4 and 16 (SIMD 1, the compiler's folds), w4a4 and w8a8, in both MAC styles, with
its weights where the lowering puts them (`qfab.compiler.estimate.weights_in_logic`). Prints one
table: LUT4 (with the carry cells in brackets), FF, block RAM and DSP measured, beside
`qfab.compiler.estimate.vvau_terms`; the sliding window in front is not included.

    python bench/vvau.py            # about 12 syntheses, a few minutes
"""

import sys

import numpy as np

from qfab.boards import synth
from qfab.compiler import estimate, intops
from qfab.compiler.plan import Fold, Stage
from qfab.hw.mac import Encoding, MacStyle
from qfab.hw.vvau import VVAU
from qfab.hw.weights import MemoryKind

CHANNELS, POSITIONS = 16, 9


def layer(bits, seed=0):
    rng = np.random.default_rng(seed)
    lo, hi = intops.qrange(bits, True)
    w = rng.integers(lo, hi + 1, (CHANNELS, POSITIONS))
    bound = intops.acc_bound(POSITIONS, max(-lo, hi), (1 << bits) - 1)
    m0, shift = zip(*(intops.dyadic(float(rng.uniform(0.5, 4.0)) * (1 << bits) / bound, m_bits=24)
                      for _ in range(CHANNELS)))
    return dict(weights=w.tolist(), bias=rng.integers(-bound // 4, bound // 4, CHANNELS).tolist(), m0=list(m0),
                shift=list(shift), in_zero_point=0, out_zero_point=0, lo=0, hi=(1 << bits) - 1)


def main():
    m = estimate.model("ice40")
    rows = []
    for bits in (4, 8):
        for style in (MacStyle.BIT_PARALLEL, MacStyle.BIT_SERIAL):
            for pe in (1, 4, 16):
                stage = Stage("dw", "mvau", CHANNELS, POSITIONS, 1, 1, 1, bits, bits)
                fold = Fold(pe, 1, style.value)
                params = layer(bits)
                in_logic = estimate.weights_in_logic(stage, fold, estimate.structure("ice40"))
                dut = VVAU(pe, 1, w_bits=bits, w_encoding=Encoding.SIGNED, a_bits=bits,
                           a_encoding=Encoding.UNSIGNED, out_bits=bits, out_signed=False, style=style,
                           weight_memory=MemoryKind.LOGIC if in_logic else MemoryKind.BLOCK, **params)
                got = synth.synthesize(dut, "ice40", options="-dsp", log=None).total
                est = estimate.resources(estimate.vvau_terms(stage, fold, m, shifts=params["shift"]), m)
                rows.append((f"w{bits}a{bits}", style.value, pe, "logic" if in_logic else "block",
                             f"{got.luts} ({got.carries})", round(est.luts), got.ffs, round(est.ffs),
                             got.bram, round(est.bram_blocks), got.dsps, round(est.dsps)))
                print(*rows[-1], sep=" | ", file=sys.stderr)
    head = ("bits", "style", "PE", "weights", "LUT4 (carry)", "est", "FF", "est", "BRAM", "est", "DSP", "est")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(v) for v in r) + " |")


if __name__ == "__main__":
    main()
