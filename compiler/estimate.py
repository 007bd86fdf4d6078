"""Resource and cycle estimates before synthesis, per stage and in total.

A linear model per stage kind; ``data/estimate_model.json`` overrides its coefficients. For now
only two whole-design scale factors (LUTs, FFs) are fitted, to Yosys ``synth_ice40`` results of
the digits MLP and CNN (docs/lowering.md gives the residuals); a per-stage fit is open work.
Pure arithmetic: no Amaranth.
"""

import json
import math
from dataclasses import dataclass, field
from importlib.resources import files

from . import intops

__all__ = ["Resources", "stage_resources", "total", "model", "fifo_resources"]


@dataclass
class Resources:
    luts: float = 0.0
    ffs: float = 0.0
    dsps: float = 0.0
    bram_bits: float = 0.0

    def __add__(self, other):
        return Resources(self.luts + other.luts, self.ffs + other.ffs, self.dsps + other.dsps,
                         self.bram_bits + other.bram_bits)

    def rounded(self):
        return {"luts": int(round(self.luts)), "ffs": int(round(self.ffs)), "dsps": int(round(self.dsps)),
                "bram_bits": int(round(self.bram_bits))}


_DEFAULT = {
    "version": 1,
    "source": "first-order defaults, not yet fitted",
    "mac_lut": {"a": 1.0, "b": 2.0},          # LUTs per lane = a * w_bits * a_bits + b (bipolar: 1.2)
    "mac_serial_lut": {"a": 1.2, "b": 2.0},   # per lane = a * w_bits + b (one activation bit a cycle)
    "acc_lut_per_bit": 1.0,
    "requant_lut": {"a": 2.0, "b": 20.0},     # per PE lane: a * (acc_bits + m_bits) + b (adders, shift, clamp)
    "requant_dsp_width": 16,                  # the M0 multiply goes on DSPs of this operand width
    "requant_rom_block": 16,                  # per-channel constants of >= this many folds: block RAM
    "control_lut": 60.0,
    "logic_weight_lut_per_bit": 0.12,         # constant weights kept in LUTs (AUTO: up to 1024 bits)
    "logic_weight_limit_bits": 1024,
    "window_lut": {"a": 3.0, "b": 80.0},      # per simd*bits
    "pool_lut": {"a": 4.0, "b": 30.0},
    "fifo_ff_per_bit": 1.0,
    "ff_per_lut": 0.6,
    "lut_scale": 1.0,                         # whole-design corrections fitted to synthesis
    "ff_scale": 1.0,
}


def model():
    try:
        text = (files("qfab.compiler") / "data" / "estimate_model.json").read_text()
        return {**_DEFAULT, **json.loads(text)}
    except (FileNotFoundError, OSError, ValueError):
        return dict(_DEFAULT)


def _acc_bits(stage, w_max=None):
    x_max = (1 << stage.a_bits) - 1
    w = w_max if w_max is not None else max(1, (1 << (stage.w_bits - 1)))
    return intops.acc_bits(intops.acc_bound(stage.k, w, x_max, 1 << 20, stage.points, 1 << 7))


def _scaled(r, m):
    return Resources(r.luts * m["lut_scale"], r.ffs * m["ff_scale"], r.dsps, r.bram_bits)


def stage_resources(stage, fold, m=None, m_bits=24):
    """Estimated `Resources` of one `qfab.compiler.folding.Stage` at ``fold``."""
    m = m or model()
    return _scaled(_stage_resources(stage, fold, m, m_bits), m)


def _stage_resources(stage, fold, m, m_bits):
    r = Resources()
    if stage.kind == "mvau":
        lanes = fold.pe * fold.simd
        if fold.style == "bit_serial":
            per_lane = m["mac_serial_lut"]["a"] * stage.w_bits + m["mac_serial_lut"]["b"]
        elif stage.w_bits == 1:
            per_lane = 1.2 * stage.a_bits
        else:
            per_lane = m["mac_lut"]["a"] * stage.w_bits * stage.a_bits + m["mac_lut"]["b"]
        acc = _acc_bits(stage)
        r.luts += lanes * per_lane + fold.pe * acc * m["acc_lut_per_bit"]
        r.luts += fold.pe * (m["requant_lut"]["a"] * (acc + m_bits) + m["requant_lut"]["b"]) + m["control_lut"]
        # acc x M0 on DSPs (iCE40 SB_MAC16 16x16, ECP5 18x18): one per operand-width piece of M0
        width = m["requant_dsp_width"]
        dot = intops.acc_bits(intops.acc_bound(stage.k, 1 << (stage.w_bits - 1), (1 << stage.a_bits) - 1,
                                               0, stage.points, 1 << 7 if stage.points > 1 else 1))
        r.dsps += fold.pe * math.ceil(m_bits / width) * math.ceil(dot / width)
        folds = stage.n // max(1, fold.pe)
        if folds >= m["requant_rom_block"]:
            # M0, offset and shift ROMs per PE lane; block RAMs are 16 bits wide x 256 deep (iCE40), so
            # count whole 4-kbit blocks: a ROM of 64 x 24 bits takes two
            blocks = math.ceil(m_bits / 16) + math.ceil((dot + m_bits) / 16) + 1
            r.bram_bits += fold.pe * blocks * math.ceil(folds / 256) * 4096
        wbits = stage.points * stage.n * stage.k * stage.w_bits
        if wbits <= m["logic_weight_limit_bits"]:
            r.luts += wbits * m["logic_weight_lut_per_bit"]
        else:
            r.bram_bits += wbits
        r.bram_bits += stage.k * stage.a_bits if stage.k > 64 else 0          # input vector buffer
        r.ffs += fold.pe * (acc * 2 + 8) + fold.simd * stage.a_bits * 2
    elif stage.kind in ("maxpool", "avgpool", "gap"):
        r.luts += m["pool_lut"]["a"] * fold.simd * stage.a_bits + m["pool_lut"]["b"]
        r.ffs += fold.simd * (stage.a_bits + 8) * 2
        if stage.kind != "gap":
            r.bram_bits += 0
    elif stage.kind == "add":
        r.luts += 8 * fold.simd * stage.a_bits + 40
        r.ffs += fold.simd * stage.a_bits * 2
    return r


def window_resources(height, width, channels, kernel, stride, bits, simd, m=None):
    m = m or model()
    rows = min(kernel[0] + stride[0], height)
    return _scaled(Resources(luts=m["window_lut"]["a"] * simd * bits + m["window_lut"]["b"], ffs=simd * bits * 2 + 48,
                             bram_bits=rows * width * channels * bits), m)


def fifo_resources(depth, width_bits, m=None):
    m = m or model()
    return _scaled(Resources(luts=width_bits * 0.5 + 12, ffs=depth * width_bits * m["fifo_ff_per_bit"] + 8), m)


def total(items):
    out = Resources()
    for r in items:
        out = out + r
    return out


def cost_luts(stage, fold):
    """The folding's cost function: estimated LUTs of a stage at a fold."""
    return stage_resources(stage, fold).luts
