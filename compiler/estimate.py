"""Resource estimates before synthesis, per stage and in total (docs/estimates.md).

Each hardware stage is described by a few physical quantities ("terms": MAC lanes times weight
and activation bits, accumulator bits, requantization bits, weight bits held in logic, ...). LUTs
and FFs are a linear function of a stage kind's terms, with coefficients fitted by
``bench/calibrate_estimates.py`` to Yosys ``synth_ice40`` results of every stage of several
accelerators and stored in ``data/estimate_model.json``. DSPs and block RAMs are counted from the
structure, the way Yosys maps it: the requantization multiply ``acc x M0`` in DSP-sized pieces, and
each memory in whole blocks, or in logic when Yosys' cost rule (``memory_libmap``: a ROM bit costs
1/16 of a LUT, a RAM bit one, a block 64 on the iCE40) finds logic cheaper, as it does for a
shallow wide weight ROM.

Pure arithmetic: no Amaranth.
"""

import functools
import json
import math
from dataclasses import dataclass, field
from importlib.resources import files

from qfab.base.errors import QfabError
from qfab.base.limits import LOGIC_WEIGHT_LIMIT_BITS

__all__ = ["logic_cells", "Resources", "Terms", "model", "stage_resources", "window_resources", "fifo_resources",
           "converter_resources", "fork_resources", "stage_terms", "window_terms", "fifo_terms",
           "converter_terms", "fork_terms", "resources", "total", "cost_luts", "weights_in_logic", "KINDS",
           "structure", "REQUANT_MODES", "RequantChoice", "requant_options", "choose_requant", "beat_cycles",
           "dsp_piece_resources", "tree_register_resources", "fmax_estimate", "fmax_by_kind", "fill_derate", "timing_kinds",
           "FMAX_MHZ", "PLUMBING_KINDS", "TOP_KINDS",
           "choose_const_requant"]

REQUANT_MODES = ("multiply", "shift_add", "thresholds", "search")   # qfab.hw.requant.RequantMode values
KINDS = ("mvau_parallel", "mvau_serial", "window", "maxpool", "avgpool", "add", "fifo", "convert", "fork")

# Structure of the families' block RAMs and multipliers (Yosys' techlibs/ice40/brams.txt,
# techlibs/lattice/brams_16kd.txt and the mul2dsp widths of synth_ice40 -dsp / synth_ecp5); a
# model file may override them.
_FAMILIES = {
    "ice40": {"block_shapes": [[256, 16], [512, 8], [1024, 4], [2048, 2]], "block_bits": 4096,
              "block_cost": 64, "dsp_width": 16,
              # nextpnr-ice40 packs a flip-flop into its driving LUT's logic cell only sometimes:
              # logic cells = LUT4s + this share of the FFs (digits MLP and CNN board builds: 4525
              # and 3893 cells for 3164 + 1717 and 2405 + 1969 LUT4s + FFs, within 2 %)
              "ff_cell_share": 0.75,
              # what the requantization choice counts a DSP and a block RAM as, in logic cells: an
              # UP5K's 5280 cells over its 8 DSPs and 30 blocks (DSPs are its scarcest resource)
              "dsp_cells": 660, "block_cells": 176},
    "ecp5": {"block_shapes": [[512, 36], [1024, 18], [2048, 9], [4096, 4], [8192, 2], [16384, 1]],
             "block_bits": 18432, "block_cost": 128, "dsp_width": 18,
             "lutram": [16, 4, 4],    # TRELLIS_DPR16X4: 16 x 4 bits at cost 4, RAMs only (no ROMs)
             # ECP5 parts have DSPs to spare (156 on the 85F): a multiplier costs less than logic
             "dsp_cells": 8, "block_cells": 400},
}
_DEFAULT = {
    "version": 2,
    "source": "defaults, not fitted",
    "family": "ice40",
    "fmax": {},                       # per family, the clock learned per timing kind (`fmax_by_kind`)
    "rom_logic_cost": 1 / 16,         # memory_libmap: a ROM bit in logic costs 1/16, a RAM bit 1
    "ram_logic_cost": 1.0,
    "block_margin": 8,                # block RAM costs this much more than its blocks (emulation)
    "requant_rom_block": 16,          # Requant forces its constant ROMs into block RAM from this depth
    "requant_rom_min_bits": 1024,     # and more than this many bits (qfab.hw.requant.rom)
    "logic_weight_limit_bits": LOGIC_WEIGHT_LIMIT_BITS,  # MVAU AUTO: weights as constants in logic up to this many bits
    "typical_shift_levels": 2,        # varying shift bits per PE lane when the shifts are unknown
    "scale": {"luts": 1.0, "ffs": 1.0},
    "families": {},
    "coefficients": {
        "mvau_parallel": {"luts": {"one": 60, "lane_bits": 1.0, "acc_bits": 1.0, "requant_bits": 3.0,
                                   "rom_bits": 0.1},
                          "ffs": {"one": 30, "acc_bits": 2.0, "requant_bits": 2.0, "word_bits": 1.0}},
        "mvau_serial": {"luts": {"one": 60, "lane_bits": 1.2, "acc_bits": 2.0, "requant_bits": 3.0,
                                 "rom_bits": 0.1},
                        "ffs": {"one": 30, "acc_bits": 2.0, "requant_bits": 2.0, "word_bits": 1.0}},
        "window": {"luts": {"one": 60, "data_bits": 3.0}, "ffs": {"one": 40, "data_bits": 2.0}},
        "maxpool": {"luts": {"one": 20, "lane_bits": 2.0}, "ffs": {"one": 10, "ring_bits": 1.0}},
        "avgpool": {"luts": {"one": 20, "lane_bits": 4.0}, "ffs": {"one": 10, "ring_bits": 1.0}},
        "add": {"luts": {"one": 20, "lane_bits": 8.0}, "ffs": {"one": 4, "lane_bits": 1.0}},
        "fifo": {"luts": {"one": 12, "width": 0.5}, "ffs": {"one": 8, "width": 1.0, "ffram_bits": 1.0}},
        "convert": {"luts": {"one": 10, "buffer_bits": 1.0}, "ffs": {"one": 4, "buffer_bits": 1.0}},
        "fork": {"luts": {"one": 4}, "ffs": {"one": 2}},
    },
}


# LUT and FF coefficients of the requantization options' own terms (not fitted yet: a fitted
# model's coefficients of the same names take precedence). An adder bit is one LUT4 with the carry
# chain; a comparison with a threshold one LUT4 per bit; a ROM bit in logic 1/16 of a LUT.
_REQUANT_COEF = {
    "luts": {"mult_add_bits": 1.0, "mult_reg_bits": 0.25, "threshold_compare_bits": 1.0,
             "threshold_rom_bits": 1 / 16, "search_bits": 1.5},
    "ffs": {"requant_pipe_bits": 1.0, "mult_reg_bits": 1.0, "threshold_reg_bits": 1.0, "search_bits": 1.0},
}


@dataclass
class Resources:
    """Estimated resources. ``bram_bits`` is whole blocks times the block size (what a board's
    block RAM budget counts), ``bram_blocks`` the blocks themselves."""
    luts: float = 0.0
    ffs: float = 0.0
    dsps: float = 0.0
    bram_bits: float = 0.0
    bram_blocks: float = 0.0

    def __add__(self, other):
        return Resources(self.luts + other.luts, self.ffs + other.ffs, self.dsps + other.dsps,
                         self.bram_bits + other.bram_bits, self.bram_blocks + other.bram_blocks)

    def rounded(self):
        return {"luts": int(round(self.luts)), "ffs": int(round(self.ffs)), "dsps": int(round(self.dsps)),
                "bram_bits": int(round(self.bram_bits)), "bram_blocks": int(round(self.bram_blocks))}


@dataclass(frozen=True)
class Terms:
    """A stage's kind (one of `KINDS`), its terms by name, and its DSPs and block RAMs."""
    kind: str
    values: dict = field(default_factory=dict)
    dsps: int = 0
    bram_blocks: int = 0


@functools.lru_cache(maxsize=4)
def _load(family):
    try:
        doc = json.loads((files("qfab.compiler") / "data" / "estimate_model.json").read_text())
    except (FileNotFoundError, OSError, ValueError):
        doc = {}
    m = {**_DEFAULT, **{k: v for k, v in doc.items() if k != "coefficients"}}
    m["coefficients"] = {**_DEFAULT["coefficients"], **doc.get("coefficients", {})}
    own = m.get("families", {}).get(family, {})
    m.update({**_FAMILIES[family], **{k: v for k, v in own.items() if k != "scale"}})
    m["scale"] = own.get("scale", {"luts": 1.0, "ffs": 1.0}) if family != m["family"] else m["scale"]
    m["target_family"] = family
    return m


@functools.lru_cache(maxsize=4)
def structure(family="ice40"):
    """The fixed facts of ``family`` (block RAM geometry, Yosys' memory cost rule, the logic
    weight limit), never the fitted model file: what the lowering's choices depend on, so that
    refitting the estimates cannot change the hardware."""
    if family not in _FAMILIES:
        raise ValueError(f"family must be one of {', '.join(_FAMILIES)}, not {family!r}")
    m = {k: v for k, v in _DEFAULT.items() if k != "coefficients"}
    m.update(_FAMILIES[family])
    m["target_family"] = family
    return m


def model(family="ice40"):
    """The model (a read-only dict): coefficients, memory and DSP structure for ``family``."""
    if family not in _FAMILIES:
        raise ValueError(f"family must be one of {', '.join(_FAMILIES)}, not {family!r}")
    return _load(family)


def _log2(n):
    return max(1, math.ceil(math.log2(max(2, n))))


def _blocks(depth, width, m):
    """Blocks of the cheapest geometry for a ``depth x width`` memory, and the mux cost of the
    depth beyond one block (memory_libmap's score)."""
    best = None
    for d, w in m["block_shapes"]:
        n = math.ceil(width / w) * math.ceil(depth / d)
        cost = n * m["block_cost"] + 0.5 * (math.ceil(depth / d) - 1) * width
        if best is None or cost < best[1]:
            best = (n, cost)
    return best


def _memory(depth, width, m, rom, force_block=False):
    """Block RAMs a memory takes (0: Yosys keeps it in logic, LUTs for a ROM and FFs for a RAM, or
    on the ECP5 a small RAM in distributed RAM: see `_in_lutram`)."""
    if depth <= 1 or width <= 0:
        return 0
    blocks, cost = _blocks(depth, width, m)
    logic = int(depth * width * (m["rom_logic_cost"] if rom else m["ram_logic_cost"]))
    if force_block:
        return blocks
    lutram = _lutram_cost(depth, width, m) if not rom else None
    if lutram is not None and lutram < cost:
        return 0
    return blocks if cost + m["block_margin"] < logic else 0


def _lutram_cost(depth, width, m):
    if not m.get("lutram"):
        return None
    d, w, cost = m["lutram"]
    return math.ceil(width / w) * math.ceil(depth / d) * cost + 0.5 * (math.ceil(depth / d) - 1) * width


def _in_lutram(depth, width, m):
    """Whether a RAM goes to the family's distributed RAM (ECP5) rather than blocks or FFs."""
    cost = _lutram_cost(depth, width, m) if depth > 1 and width > 0 else None
    if cost is None:
        return False
    return cost < _blocks(depth, width, m)[1] and cost + m["block_margin"] < depth * width * m["ram_logic_cost"]


def _dsp_pieces(a_bits, b_bits, m):
    """Multipliers of a signed ``a x b`` product split into DSP-sized pieces (Yosys mul2dsp)."""
    w = m["dsp_width"] - 1
    return math.ceil(a_bits / w) * math.ceil(b_bits / w)


def mac_acc_bits(stage):
    w_max = 1 if stage.w_bits == 1 else 1 << (stage.w_bits - 1)
    bound = stage.k * stage.points * w_max * ((1 << stage.a_bits) - 1)
    return bound.bit_length() + 1


def dsp_piece_resources(stage, fold, m_bits=24, m=None, cells=False):
    """What a ``multiply`` requantization in registered DSP pieces (`qfab.hw.requant.Requant`'s
    ``dsp_width``) adds per PE lane beyond the plain multiply: the accumulator's digit adder and
    the pieces' sum, about four LUTs per bit of the product (``acc_bits + m_bits``): one Yosys
    synth_ice40 of a 21-bit accumulator by a 24-bit M0 took 254 LUT4 with the pieces, 72 without
    (their registers sit in the SB_MAC16s). With ``cells`` (`Requant`'s ``dsp_cell``, the ECP5's
    MULT18X18D with its input registers) each piece's product is registered in the fabric: twice
    the family's ``dsp_width`` (``m``, the model) flip-flops a piece."""
    acc = mac_acc_bits(stage)
    ffs = 0
    if cells:
        m = m or model()
        ffs = fold.pe * _dsp_pieces(acc, m_bits + 1, m) * 2 * m["dsp_width"]
    return Resources(luts=fold.pe * 4 * (acc + m_bits), ffs=ffs)


def _tree_cut_bits(n, registers, width):
    """Flip-flops of the register levels `qfab.hw._arith.sum_tree` cuts a tree of ``n`` addends
    by (``registers`` of them; the same groups: ``2 ** (levels - levels // (registers + 1))`` at
    the first cut, then the group sums cut with one register fewer), each register
    ``width(span)`` bits wide for a group summing ``span`` of the original addends."""
    total, span = 0, 1
    while registers > 0:
        levels = max(1, (n - 1).bit_length())
        size = -(-n // (1 << (levels - levels // (registers + 1))))
        n, span = -(-n // size), span * size
        total += n * width(span)
        registers -= 1
    return total


def tree_register_resources(stage, fold, registers, tiles=4, weights_vary=True):
    """The flip-flops an MVAU's adder trees take with ``registers`` levels
    (`qfab.hw.mac.MacArray`'s ``tree_registers``) beyond the one level the fitted model counts:
    each cut holds a sum per group of neighbouring addends, and the first cut of a deep tree is
    low down, where the groups are many (``tiles`` LUT tiles a lane with ``weights_vary``, else
    one addend a lane). A group of ``span`` addends is counted ``w + a - 2 + log2(span / tiles)``
    bits: the ECP5 digits MLP w8a8's `gemm_3` (SIMD 64 of 8-bit lanes from a ROM, four levels)
    has 11.6, 14.3, 16.6 and 19.9 bits at spans of 4, 16, 64 and 256 tiles in its RTL (4,220
    flip-flops a PE; 4,296 by this count). A `MacArray` of run-time weights has wider groups
    (13, 16, 18 and 20 bits there: its lanes take every value); the test
    (tests/compiler/test_estimate.py) holds this count within 30 % below and 10 % above that
    RTL. Bit-serial trees are not counted (one level there)."""
    if registers <= 1 or fold.style != "bit_parallel":
        return Resources()
    per_lane = max(1, tiles) if weights_vary else 1
    product = stage.w_bits + stage.a_bits - 2
    acc = mac_acc_bits(stage)

    def width(span):
        return min(acc, max(2, round(product + math.log2(span / per_lane))))
    n = fold.simd * per_lane
    excess = _tree_cut_bits(n, registers, width) - _tree_cut_bits(n, 1, width)
    return Resources(ffs=fold.pe * max(1, fold.pixels) * excess)


def fetch_register_resources(stage, fold):
    """An MVAU's second fetch register (`qfab.hw.mvau.MVAU`'s ``fetch_register``): the weight
    word and the activations of one beat in flip-flops."""
    return Resources(ffs=fold.pe * fold.simd * stage.w_bits + fold.simd * stage.a_bits)


def skid_resources(stage, fold, choice=None):
    """An MVAU's skid queue (`qfab.hw.mvau.MVAU`'s ``skid``): two beats of ``pe`` accumulators in
    flip-flops and a 2:1 mux per bit; one beat, no mux, before a requantization ``choice`` (a
    `RequantChoice`) of more than a cycle a beat."""
    bits = fold.pe * mac_acc_bits(stage)
    if choice is not None and choice.interval > 1:
        return Resources(luts=0, ffs=bits)
    return Resources(luts=bits, ffs=2 * bits)


def _dram_queue(bits, depth):
    """A queue of ``depth`` words of ``bits`` in the ECP5's distributed RAM (16 words x 4 bits in a
    slice pair and the write slice beside it: about 1.5 LUT4 per bit and 16 words), its level and
    free count."""
    return Resources(luts=math.ceil(1.5 * bits * math.ceil(depth / 16)) + 12, ffs=4 * depth.bit_length() + 4)


def reserve_resources(stage, fold, depth):
    """An MVAU's reserved queue (`qfab.hw.mvau.MVAU`'s ``reserve``): ``depth`` beats of ``pe``
    accumulators (`_dram_queue`)."""
    return _dram_queue(fold.pe * mac_acc_bits(stage), depth)


def requant_queue_resources(fold, out_bits, depth):
    """An MVAU's requantization queue (`qfab.hw.requant.Requant`'s ``reserve``, with the MVAU's
    reserved queue): ``depth`` beats of ``pe`` outputs of ``out_bits`` (`_dram_queue`)."""
    return _dram_queue(fold.pe * out_bits, depth)


def _pool_acc_bits(stage):
    window = stage.k if stage.kind == "avgpool" else stage.vectors
    return stage.a_bits + _log2(window) + 1


def _const_requant_terms(choice, lanes, acc):
    """Terms of a pool's or an add's requantization by constants beyond the fitted ones: none
    for ``multiply`` (its DSPs are fitted), else its adders or comparators and ``no_dsp``."""
    if choice is None or choice.mode == "multiply":
        return {}
    if choice.mode == "shift_add":
        return {"no_dsp": 1, "mult_add_bits": lanes * choice.adders * (acc + choice.m0_bits)}
    return {"no_dsp": 1, "threshold_compare_bits": lanes * choice.levels * (acc + 1)}


def stage_terms(stage, fold, m=None, m_bits=24, shifts=None, requant=None):
    """`Terms` of one `qfab.compiler.folding.Stage` at ``fold`` (windows: `window_terms`).

    ``shifts``: an MVAU's per-channel requantization shifts, if known (else the stage's
    ``shifts`` attribute if it has one, else a typical spread): they decide the width of its
    variable shifter, which can be a large share of a small unit. ``requant``: an MVAU's
    `RequantChoice` (default: ``multiply``, on DSPs).
    """
    m = m or model()
    if stage.kind == "mvau":
        return _mvau_terms(stage, fold, m, m_bits, shifts, requant)
    simd, bits = fold.simd, stage.a_bits
    if stage.kind == "maxpool":
        counters = _log2(stage.k) + _log2(stage.n // simd)
        return Terms("maxpool", {"one": 1, "lane_bits": simd * bits, "ring_bits": stage.n * bits,
                                 "count_bits": counters})
    if stage.kind in ("avgpool", "gap"):
        window = stage.k if stage.kind == "avgpool" else stage.vectors
        acc = _pool_acc_bits(stage)
        counters = _log2(window) + _log2(stage.n // simd)
        return Terms("avgpool", {"one": 1, "lanes": simd, "lane_bits": simd * acc, "ring_bits": stage.n * acc,
                                 "count_bits": counters, **_const_requant_terms(requant, simd, acc)})
    if stage.kind == "add":
        return Terms("add", {"one": 1, "lanes": simd, "lane_bits": simd * bits,
                             **_const_requant_terms(requant, simd, bits + 1)})
    raise ValueError(f"no estimate for stage kind {stage.kind!r}")


def _shift_levels(shifts, pe, nf, block):
    """Stages of the requantization's variable right shift, summed over the PE lanes: none for a
    lane whose channels share one shift (a constant), else the bits of its shifts above the lane's
    smallest (wiring) that differ between its channels (all of ``bits(max - min)`` when its shift
    ROM is a block RAM, whose contents synthesis cannot see)."""
    total = 0
    for lane in range(pe):
        mine = {int(shifts[f * pe + lane]) for f in range(nf)}
        if len(mine) > 1:
            least = min(mine)
            varying = 0
            for v in mine:
                varying |= v - least
            total += varying.bit_length() if block else bin(varying).count("1")
    return total


def _shift_rom_width(shifts, pe, nf):
    """Widest shift ROM of the lanes: ``bits(max - min)`` of a lane's shifts (`qfab.hw.requant`)."""
    widths = [max({int(shifts[f * pe + lane]) for f in range(nf)}) - min({int(shifts[f * pe + lane]) for f in range(nf)})
              for lane in range(pe)]
    return max(1, max(widths).bit_length())


def _rom_forced(depth, width, m):
    """Whether `qfab.hw.requant.rom` asks block RAM for a ``depth x width`` ROM."""
    return depth >= m["requant_rom_block"] and depth * width > m["requant_rom_min_bits"]


def weights_in_logic(stage, fold, m=None):
    """Whether an MVAU stage at ``fold`` builds its weights in as constants (``LOGIC``), as the
    lowering does: a layer of at most ``logic_weight_limit_bits`` weight bits, or one whose weight
    ROM Yosys would keep in logic rather than block RAM anyway (`_memory`). Then the MAC array is
    built for the weights it sees (zero lanes vanish, constant lanes multiply by constants): at 16
    and 64 fold steps the dense digits MLP took 2-3 % fewer LUTs this way than with its weights as a
    ROM, a 90 %-pruned one 45 % fewer (docs/hardware.md)."""
    m = m or model()
    depth = stage.points * (stage.n // fold.pe) * (stage.k // fold.simd)
    word = fold.pe * fold.simd * stage.w_bits
    return depth * word <= m["logic_weight_limit_bits"] or _memory(depth, word, m, rom=True) == 0


def _mvau_terms(stage, fold, m, m_bits, shifts, requant=None):
    pe, simd, w, a = fold.pe, fold.simd, stage.w_bits, stage.a_bits
    serial = fold.style == "bit_serial"
    lanes = pe * simd
    acc = mac_acc_bits(stage)
    sf, nf = stage.k // simd, stage.n // pe
    depth = stage.points * nf * sf                      # weight words
    word = lanes * w
    constant = weights_in_logic(stage, fold, structure(m.get("target_family", "ice40")))
    weight_blocks = 0 if constant else _memory(depth, word, m, rom=True)
    buffer_blocks = _memory(2 * sf, simd * a, m, rom=False)
    # Requant: per PE lane, ROMs of one entry per fold: M0 (m_bits), offset (the sum's width:
    # acc x M0, and the rounding half and zero point at the channel's shift) and shift (6 bits)
    if shifts is None:
        shifts = getattr(stage, "shifts", None)
    if shifts is None:
        sum_bits = acc + m_bits + 2
        shift_width = 6
        levels = 0 if nf <= 1 else pe * (6 if _rom_forced(nf, 6, m) else m["typical_shift_levels"])
        shifted_bits = sum_bits
    else:
        sum_bits = max(acc + m_bits, max(shifts)) + 2
        shift_width = _shift_rom_width(shifts, pe, nf)
        levels = _shift_levels(shifts, pe, nf, _rom_forced(nf, shift_width, m))
        shifted_bits = max(2, sum_bits - min(shifts))
    requant = requant or RequantChoice("multiply")
    m0_width = m_bits if requant.mode != "shift_add" else -(-requant.m0_bits // requant.digit_bits) * requant.digit_bits
    widths = (m0_width, sum_bits, shift_width)
    rq_blocks = sum(_memory(nf, width, m, rom=True, force_block=_rom_forced(nf, width, m))
                    for width in widths) if nf > 1 else 0
    rq_logic = 0 if nf <= 1 else nf * sum(w for w in widths if not _memory(nf, w, m, rom=True,
                                                                           force_block=_rom_forced(nf, w, m)))
    own, own_blocks = _requant_terms(requant, acc, nf, m)
    if requant.mode in ("thresholds", "search"):       # no multiplier, offset, shifter nor their ROMs
        sum_bits = levels = rq_logic = rq_blocks = 0
    values = {
        "one": 1,
        "lanes": lanes,
        "lane_bits": 0 if constant else lanes * w * (1 if serial else a),
        "const_lane_bits": lanes * w * (1 if serial else a) if constant else 0,
        "acc_bits": pe * acc,
        "requant_bits": pe * sum_bits,
        "shifter_bits": levels * shifted_bits,
        "rom_bits": depth * word if depth > 1 and not weight_blocks else 0,
        "word_bits": word if depth > 1 else 0,
        "act_bits": simd * a,
        "ffram_bits": 0 if buffer_blocks or _in_lutram(2 * sf, simd * a, m) else 2 * sf * simd * a,
        "requant_rom_bits": pe * rq_logic,
        "requant_pipe_bits": pe * sum_bits,
        **{k: pe * v for k, v in own.items()},
    }
    dsps = pe * _dsp_pieces(acc, m_bits + 1, m) if requant.mode == "multiply" else 0
    return Terms("mvau_serial" if serial else "mvau_parallel", values, dsps,
                 weight_blocks + buffer_blocks + pe * (rq_blocks + own_blocks))


@dataclass(frozen=True)
class RequantChoice:
    """How an MVAU requantizes (`REQUANT_MODES`, the values of `qfab.hw.requant.RequantMode`) and
    what the choice depends on: ``levels = hi - lo`` (the thresholds per channel), ``m0_bits``
    (bits of the largest ``M0``) and ``digit_bits`` (bits of ``M0`` per cycle, ``shift_add``)."""
    mode: str
    levels: int = 255
    m0_bits: int = 24
    digit_bits: int = 1
    adders: int = 0             # constant multiplies by shift and add (pools, add): adders per lane

    @property
    def count_bits(self):
        return max(1, self.levels.bit_length())

    @property
    def steps(self):
        """Cycles of the shift-and-add multiply (``shift_add``): ``ceil(m0_bits / digit_bits)``."""
        return max(1, -(-self.m0_bits // self.digit_bits))

    @property
    def interval(self):
        """Cycles per output beat (as `qfab.hw.requant.Requant.interval` and
        `qfab.hw.threshold.ThresholdRequant.interval`)."""
        if self.mode == "shift_add":
            return self.steps + 1
        return self.count_bits if self.mode == "search" else 1

    @property
    def latency(self):
        """Cycles from an accumulator in to its output (as `qfab.hw.requant.Requant.latency` and
        `qfab.hw.threshold.ThresholdRequant.latency`): ``multiply`` 5 (input and M0, product, sum,
        shift, clamp), ``shift_add`` ``steps + 5``, ``thresholds`` 3 (input, compare, count),
        ``search`` ``count_bits + 1``."""
        if self.mode == "multiply":
            return 5
        if self.mode == "shift_add":
            return self.steps + 5
        return 3 if self.mode == "thresholds" else self.count_bits + 1


def _requant_terms(choice, acc, nf, m):
    """Per PE lane: the terms of a requantization option beyond the shared tail, and its blocks."""
    if choice.mode == "shift_add":
        steps = choice.steps
        width = acc + choice.m0_bits
        # a right-shifting multiply from the offset's low bits (`qfab.hw.requant.Requant._shift_add`):
        # an adder as wide as the accumulator or M0 per two bits of M0 a step, 3 * acc registered
        # from two bits up; registers for acc, the product's high and low parts and M0's digits.
        # (Its offset sum is then wiring; the shared terms still count one, not refitted, and
        # this counts the high part and M0's digits a few bits short, and not the handoff's add
        # of the offset's high part: together still above what the UP5K designs use, e.g. the
        # digits MLP w8a8 4,510 cells estimated, 4,425 placed.)
        triple = acc + 2 if choice.digit_bits >= 2 else 0
        step_bits = max(steps * choice.digit_bits, acc + choice.digit_bits) + 2
        return {"mult_add_bits": step_bits * -(-choice.digit_bits // 2) + triple,
                "mult_reg_bits": width + acc + triple + steps * choice.digit_bits + _log2(steps)}, 0
    tw = acc + 1
    if choice.mode == "thresholds":
        rom_bits = nf * choice.levels * tw if nf > 1 else 0
        blocks = _memory(nf, choice.levels * tw, m, rom=True) if nf > 1 else 0
        return {"threshold_compare_bits": choice.levels * tw, "threshold_reg_bits": acc + choice.levels,
                "threshold_rom_bits": 0 if blocks else rom_bits}, blocks
    if choice.mode == "search":
        depth = nf << choice.count_bits
        blocks = _memory(depth, tw, m, rom=True)
        return {"search_bits": tw + 3 * choice.count_bits + _log2(nf),
                "threshold_rom_bits": 0 if blocks else depth * tw}, blocks
    return {}, 0


def beat_cycles(stage, fold):
    """Cycles an MVAU stage at ``fold`` has for each output beat: ``P * K / simd`` (times
    ``a_bits`` bit-serially)."""
    serial = stage.a_bits if fold.style == "bit_serial" else 1
    return stage.points * (stage.k // fold.simd) * serial


def requant_options(stage, fold, *, levels, m0_bits, m_bits=24, m=None):
    """Every requantization option an MVAU stage at ``fold`` can use without slowing down, with
    its `Resources` (`RequantChoice` -> `Resources`): ``multiply``; ``thresholds``; ``search``
    when each output beat has ``count_bits`` cycles; ``shift_add`` with the fewest bits of
    ``M0`` per cycle (at most 4) that keep the rate."""
    m = m or model()
    cycles = beat_cycles(stage, fold)
    choices = [RequantChoice("multiply", levels, m0_bits), RequantChoice("thresholds", levels, m0_bits)]
    search = RequantChoice("search", levels, m0_bits)
    if search.interval <= cycles:
        choices.append(search)
    if cycles >= 2:
        digit = -(-max(1, m0_bits) // (cycles - 1))
        if digit <= 4:
            choices.append(RequantChoice("shift_add", levels, m0_bits, digit))
    return {c: resources(_mvau_terms(stage, fold, m, m_bits, None, c), m) for c in choices}


def choose_requant(stage, fold, family="ice40", *, levels, m0_bits, m_bits=24):
    """The cheapest `requant_options` of an MVAU stage, in logic cells plus its DSPs and block
    RAMs at the family's exchange rate (``dsp_cells``, ``block_cells`` of `structure`: on the
    iCE40 a DSP counts as 660 cells, on the ECP5 as 8). Reads only `structure`, never the fitted
    model, so the lowering and the estimates agree and refitting cannot change the hardware.

    A fold that names its mode (``fold.requant``: set by `--board` folding to spend DSPs the
    design leaves unused, or by a folding file) gets that option; `QfabError` if the stage cannot
    use it at this fold (``search`` and ``shift_add`` need cycles per output beat)."""
    m = structure(family)
    options = requant_options(stage, fold, levels=levels, m0_bits=m0_bits, m_bits=m_bits, m=_unfitted(family))
    wanted = fold.requant
    if wanted is not None:
        for choice in options:
            if choice.mode == wanted:
                return choice
        raise QfabError(f"layer {stage.name!r}: requantization {wanted!r} is not possible at PE={fold.pe}, "
                        f"SIMD={fold.simd} ({beat_cycles(stage, fold)} cycles per output beat); "
                        f"possible: {', '.join(c.mode for c in options)}")
    best = None
    for choice, res in options.items():
        cost = res.luts + 0.75 * res.ffs + res.dsps * m["dsp_cells"] + res.bram_blocks * m["block_cells"]
        if best is None or cost < best[0]:
            best = (cost, choice)
    return best[1]


def choose_const_requant(stage, fold, family="ice40", *, levels, multipliers, thresholds=True):
    """How a pool (``thresholds=True``) or an add (two multipliers, ``thresholds=False``) with
    constant ``multipliers`` requantizes: ``multiply`` (``*``: DSPs), ``shift_add`` (an adder tree
    per multiplier over its canonical signed digits) or ``thresholds`` (``levels`` constant
    comparisons), priced as `choose_requant` prices (a DSP at the family's ``dsp_cells``; the
    multiplies counted in DSP-sized pieces, as Yosys maps them)."""
    m = structure(family)
    acc = _pool_acc_bits(stage) if stage.kind in ("avgpool", "gap") else stage.a_bits + 1
    m0_bits = max(1, max(int(v) for v in multipliers).bit_length())
    nonzero = [int(v) for v in multipliers if int(v) > 1]
    adders = sum(len(_csd(v)) - 1 for v in nonzero)
    dsps = fold.simd * sum(_dsp_pieces(acc, v.bit_length() + 1, m) for v in nonzero)
    options = [(RequantChoice("multiply", levels, m0_bits), dsps * m["dsp_cells"]),
               (RequantChoice("shift_add", levels, m0_bits, adders=adders), fold.simd * adders * (acc + m0_bits))]
    if thresholds:
        options.append((RequantChoice("thresholds", levels, m0_bits), fold.simd * levels * (acc + 1)))
    return min(options, key=lambda o: o[1])[0]


def _csd(constant):
    """Nonzero canonical signed digits of ``constant`` (as `qfab.hw.requant.csd_digits`)."""
    digits = []
    while constant:
        if constant & 1:
            sign = 2 - (constant & 3)
            digits.append(sign)
            constant -= sign
        constant >>= 1
    return digits


@functools.lru_cache(maxsize=4)
def _unfitted(family):
    """The default coefficients with ``family``'s structure: what `choose_requant` prices with."""
    m = dict(structure(family))
    m["coefficients"] = _DEFAULT["coefficients"]
    m["scale"] = {"luts": 1.0, "ffs": 1.0}
    return m


def window_terms(height, width, channels, kernel, stride, bits, simd, m=None):
    m = m or model()
    rows = min(kernel[0] + stride[0], height)
    depth = rows * width * channels // simd
    blocks = _memory(depth, simd * bits, m, rom=False)
    counters = (_log2(height) + _log2(width) + _log2(channels // simd) + _log2(kernel[0] * kernel[1])
                + _log2(depth))
    return Terms("window", {"one": 1, "data_bits": simd * bits, "count_bits": counters,
                            "ffram_bits": 0 if blocks or _in_lutram(depth, simd * bits, m) else depth * simd * bits},
                 0, blocks)


def fifo_terms(depth, width_bits, m=None):
    """A `StreamFIFO` (SyncFIFOBuffered: an output register and a queue of ``depth - 1``)."""
    m = m or model()
    blocks = _memory(depth - 1, width_bits, m, rom=False)
    return Terms("fifo", {"one": 1, "width": width_bits, "count_bits": _log2(depth),
                          "ffram_bits": 0 if blocks or _in_lutram(depth - 1, width_bits, m)
                          else (depth - 1) * width_bits}, 0, blocks)


def converter_terms(n_in, n_out, bits, m=None):
    """A `WidthConverter`: a buffer of ``n_in + n_out + min - gcd`` elements, written in chunks."""
    g = math.gcd(n_in, n_out)
    capacity = n_in + n_out + min(n_in, n_out) - g
    return Terms("convert", {"one": 1, "buffer_bits": capacity * bits,
                             "mux_bits": capacity * bits * (n_in // g)})


def fork_terms(n, bits, count, m=None):
    return Terms("fork", {"one": 1, "outputs": count})


def resources(terms, m=None):
    """`Resources` of `Terms`: the kind's fitted coefficients times the terms."""
    m = m or model()
    coef = m["coefficients"][terms.kind]
    if terms.kind.startswith("mvau") or terms.kind in ("avgpool", "add"):
        coef = {**coef, "luts": {**_REQUANT_COEF["luts"], **coef["luts"]}, "ffs": {**_REQUANT_COEF["ffs"], **coef["ffs"]}}
    if terms.values.get("no_dsp"):                  # requantized without multipliers
        coef = {**coef, "dsps": {}}
    luts = sum(c * terms.values.get(k, 0) for k, c in coef["luts"].items())
    ffs = sum(c * terms.values.get(k, 0) for k, c in coef["ffs"].items())
    # pools and adds multiply by constants: how many DSPs Yosys spends on them is fitted
    dsps = terms.dsps + sum(c * terms.values.get(k, 0) for k, c in coef.get("dsps", {}).items())
    return Resources(luts * m["scale"]["luts"], ffs * m["scale"]["ffs"], dsps,
                     terms.bram_blocks * m["block_bits"], terms.bram_blocks)


def stage_resources(stage, fold, m=None, m_bits=24, requant=None):
    """Estimated `Resources` of one `qfab.compiler.folding.Stage` at ``fold`` (``requant``: a
    pool's or an add's `RequantChoice`, default ``multiply``)."""
    m = m or model()
    return resources(stage_terms(stage, fold, m, m_bits, requant=requant), m)


def window_resources(height, width, channels, kernel, stride, bits, simd, m=None):
    """Estimated `Resources` of the `SlidingWindow` in front of a convolution or pool."""
    m = m or model()
    return resources(window_terms(height, width, channels, kernel, stride, bits, simd, m), m)


def wide_window_terms(height, width, channels, kernel, stride, bits, pixels, in_pixels, m=None):
    """A `WideWindow` (hw/wide_window.py), counted with the window's coefficients (it has no
    calibration runs of its own): a line buffer of ``min(KH + SH, H)`` rows in registers read as
    whole windows (``ffram_bits``) and an output beat of ``pixels`` whole windows (``data_bits``)."""
    rows = min(kernel[0] + stride[0], height)
    counters = _log2(height) + _log2(width) + _log2(width // in_pixels) + _log2(rows)
    return Terms("window", {"one": 1, "data_bits": pixels * kernel[0] * kernel[1] * channels * bits,
                            "count_bits": counters, "ffram_bits": rows * width * channels * bits}, 0, 0)


def wide_window_resources(height, width, channels, kernel, stride, bits, pixels, in_pixels, m=None):
    """Estimated `Resources` of the `WideWindow` in front of a convolution taking whole windows."""
    m = m or model()
    return resources(wide_window_terms(height, width, channels, kernel, stride, bits, pixels, in_pixels, m), m)


def fifo_resources(depth, width_bits, m=None):
    m = m or model()
    return resources(fifo_terms(depth, width_bits, m), m)


def converter_resources(n_in, n_out, bits, m=None):
    m = m or model()
    return resources(converter_terms(n_in, n_out, bits, m), m)


def fork_resources(n, bits, count, m=None):
    m = m or model()
    return resources(fork_terms(n, bits, count, m), m)


# Clock the open toolchain reaches on a design that leaves room (measured with qfab bitstream,
# docs/boards.md: digits CNN and MLP w4a4 on the UP5K at 36.6 and 32.3 MHz, on the ECP5-85F 88-90
# MHz), and how it falls as the device fills: above FILL_KNEE of the tightest resource the
# placer runs out of room (UP5K, MLP w4a4 at 98 % of the logic cells: 30.7 MHz).
FMAX_MHZ = {"ice40": 36.0, "ecp5": 90.0}
FILL_KNEE = 0.85
FILL_SLOPE = 1.2          # the fraction of the clock lost per unit of fill above the knee

# What a critical path can lie in (`qfab.boards.report.critical_kind` names it from a routed
# design's cells, `timing_kinds` lists a plan's): a stage's kind ("mvau", "vvau", "window",
# "maxpool", ...), a matrix stage's requantization by mode ("requant.multiply",
# "requant.thresholds", "requant.search", "requant.shift_add"), the plumbing ("fifo", "convert",
# "fork") and the board top ("link": the host link; "top": the rest of it).
PLUMBING_KINDS = ("fifo", "convert", "fork")
TOP_KINDS = ("link", "top")


def fill_derate(fill):
    """The share of its clock a design keeps at ``fill`` of its device's tightest resource."""
    return 1 - FILL_SLOPE * max(0.0, fill - FILL_KNEE)


def fmax_by_kind(family):
    """The Fmax in MHz learned per timing kind on ``family`` (``{kind: MHz}``, at low fill), from the
    calibration builds' critical paths (`bench/calibrate_fmax.py` writes the ``fmax`` section of
    ``data/estimate_model.json``); empty when not calibrated."""
    return dict(model(family).get("fmax", {}).get(family, {}).get("kinds", {}))


def fmax_estimate(family, fill, kinds=None, learned=None):
    """Estimated Fmax in MHz of a design on ``family`` that fills ``fill`` (0 to 1) of its device's
    tightest resource and holds the timing ``kinds`` (`timing_kinds`; None: not known): the
    slowest of the kinds' learned clocks (``learned``, default `fmax_by_kind`; a kind never seen
    on a critical path, or all of them when ``kinds`` is None, counts at the family's `FMAX_MHZ`),
    then falling by `FILL_SLOPE` per unit of fill above `FILL_KNEE`."""
    base = FMAX_MHZ.get(family, FMAX_MHZ["ice40"])
    if kinds:
        learned = fmax_by_kind(family) if learned is None else learned
        base = min(learned.get(k, base) for k in kinds)
    return base * fill_derate(fill)


def timing_kinds(stages, fifos=True, converters=False, forks=False, board_top=True):
    """The timing kinds (see `fmax_estimate`) of a design: ``stages`` as ``(kind, requant mode or
    None)`` pairs, whether it has FIFOs, width converters and forks, and the board top."""
    kinds = set()
    for kind, requant in stages:
        kinds.add(kind)
        if kind in ("mvau", "vvau"):
            kinds.add(f"requant.{requant or 'multiply'}")
    kinds |= {k for k, present in zip(PLUMBING_KINDS, (fifos, converters, forks)) if present}
    return kinds | (set(TOP_KINDS) if board_top else set())


def logic_cells(res, family="ice40"):
    """iCE40 logic cells (one LUT4 and one FF each) that `Resources` ``res`` will take after
    nextpnr's packing: its LUTs plus the model's ``ff_cell_share`` of its FFs; None for a family
    that counts LUTs and FFs apart (ECP5)."""
    share = model(family).get("ff_cell_share")
    return None if share is None else res.luts + share * res.ffs


def total(items):
    out = Resources()
    for r in items:
        out = out + r
    return out


def cost_luts(stage, fold):
    """The folding's cost function: estimated LUTs of a stage at a fold. A convolution taking
    whole windows (``simd`` beyond its channels) adds its `WideWindow` and ``pixels`` copies of the
    engine; the window's shape is read back from the `Stage` (a square kernel, stride 1), enough to
    rank folds (the design estimate counts the real one)."""
    luts = stage_resources(stage, fold).luts * fold.pixels
    if stage.row_pixels and fold.simd > stage.simd_of:
        c = stage.simd_of
        kh = max(1, round(math.sqrt(stage.k // c)))
        w = stage.row_pixels + kh - 1
        luts += wide_window_resources(w, w, c, (kh, stage.k // c // kh), (1, 1), stage.a_bits, fold.pixels, 1).luts
    return luts


def vvau_terms(stage, fold, m=None, m_bits=24, shifts=None):
    """`Terms` of a VVAU (a depthwise convolution, `qfab.hw.vvau.VVAU`) for its `Stage` (counted
    as an MVAU's: ``n`` channels, ``k`` window positions) at ``fold``: an MVAU's MAC lanes, weight
    ROM and requantization, with the VVAU's window store in place of the MVAU's vector buffer
    (``simd`` memories of ``2 * (n / pe) * (k / simd)`` words of ``pe`` codes: two whole windows)."""
    m = m or model()
    terms = _mvau_terms(stage, fold, m, m_bits, shifts)
    pe, simd, a = fold.pe, fold.simd, stage.a_bits
    depth, width = 2 * (stage.n // pe) * (stage.k // simd), pe * a
    blocks = simd * _memory(depth, width, m, rom=False)
    in_logic = not blocks and not _in_lutram(depth, width, m)
    values = dict(terms.values, act_bits=simd * pe * a, ffram_bits=simd * depth * width if in_logic else 0)
    mvau_buffer = _memory(2 * (stage.k // simd), simd * a, m, rom=False)
    return Terms(terms.kind, values, terms.dsps, terms.bram_blocks - mvau_buffer + blocks)
