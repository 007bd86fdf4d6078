"""The resource estimate model: it loads, every fitted key is used, it grows with the work, and
its block RAM and DSP counts follow Yosys' mapping rules."""

import json
from importlib.resources import files

import pytest

from qfab.compiler import estimate
from qfab.compiler.folding import Fold, Stage

DENSE = Stage("fc", "mvau", n=64, k=64, vectors=1, w_bits=4, a_bits=4, simd_of=64)
CONV = Stage("conv", "mvau", n=16, k=72, vectors=16, w_bits=4, a_bits=4, simd_of=8)


def _json():
    return json.loads((files("qfab.compiler") / "data" / "estimate_model.json").read_text())


def _terms_of_every_kind(m):
    pool = Stage("p", "maxpool", n=8, k=4, vectors=16, a_bits=4)
    return {
        "mvau_parallel": estimate.stage_terms(DENSE, Fold(1, 8), m),
        "mvau_serial": estimate.stage_terms(DENSE, Fold(1, 8, "bit_serial"), m),
        "window": estimate.window_terms(8, 8, 8, (2, 2), (2, 2), 4, 1, m),
        "maxpool": estimate.stage_terms(pool, Fold(1, 2), m),
        "avgpool": estimate.stage_terms(Stage("a", "gap", n=16, k=1, vectors=16, a_bits=4), Fold(1, 1), m),
        "add": estimate.stage_terms(Stage("s", "add", n=512, k=1, vectors=1, a_bits=4), Fold(1, 4), m),
        "fifo": estimate.fifo_terms(4, 32, m),
        "convert": estimate.converter_terms(8, 1, 4, m),
        "fork": estimate.fork_terms(8, 4, 2, m),
    }


def test_model_loads_fitted():
    m = estimate.model()
    assert "fitted" in m["source"] and "bench/calibrate_estimates.py" in m["source"]
    assert set(m["coefficients"]) == set(estimate.KINDS)
    for kind, coef in m["coefficients"].items():
        assert coef["luts"] and coef["ffs"], kind
        assert all(c >= 0 for c in (*coef["luts"].values(), *coef["ffs"].values())), kind
    assert estimate.model("ecp5")["block_bits"] == 18432
    with pytest.raises(ValueError, match="family must be one of ice40, ecp5, not 'xc7'"):
        estimate.model("xc7")


def test_every_key_of_the_model_file_is_used():
    doc = _json()
    assert set(doc) <= set(estimate._DEFAULT), set(doc) - set(estimate._DEFAULT)
    terms = _terms_of_every_kind(estimate.model())
    assert set(doc["coefficients"]) == set(terms)
    for kind, coef in doc["coefficients"].items():
        assert {"luts", "ffs"} <= set(coef) <= {"luts", "ffs", "dsps"}, kind
        for resource in coef:
            unused = set(coef[resource]) - set(terms[kind].values)
            assert not unused, f"{kind}.{resource}: {unused} are not terms of this kind"
    for family, own in doc.get("families", {}).items():
        assert set(own) <= set(estimate._FAMILIES[family]) | {"scale"}
        assert set(own.get("scale", {})) <= {"luts", "ffs"}


def test_every_kind_has_a_positive_estimate():
    m = estimate.model()
    for kind, terms in _terms_of_every_kind(m).items():
        r = estimate.resources(terms, m)
        assert r.luts > 0 and r.ffs > 0, kind


@pytest.mark.parametrize("style", ["bit_parallel", "bit_serial"])
def test_mvau_grows_with_lanes(style):
    for stage in (DENSE, CONV):
        luts = [estimate.stage_resources(stage, Fold(pe, simd, style)).luts
                for pe in (1, 2, 4, 8) for simd in (1, 2, 4, 8)]
        by_lanes = sorted(zip([pe * simd for pe in (1, 2, 4, 8) for simd in (1, 2, 4, 8)], luts))
        assert estimate.stage_resources(stage, Fold(8, 8, style)).luts > \
            2 * estimate.stage_resources(stage, Fold(1, 1, style)).luts
        for simd in (1, 2, 4):
            a = estimate.stage_resources(stage, Fold(2, simd, style)).luts
            b = estimate.stage_resources(stage, Fold(2, 2 * simd, style)).luts
            assert b > a, (stage.name, simd)
        for pe in (1, 2, 4):
            a = estimate.stage_resources(stage, Fold(pe, 8, style)).luts
            b = estimate.stage_resources(stage, Fold(2 * pe, 8, style)).luts
            assert b > a, (stage.name, pe)
        assert by_lanes[-1][1] > by_lanes[0][1]


@pytest.mark.parametrize("style", ["bit_parallel", "bit_serial"])
def test_mvau_grows_with_bits(style):
    def at(w, a):
        s = Stage("fc", "mvau", n=64, k=64, vectors=1, w_bits=w, a_bits=a, simd_of=64)
        return estimate.stage_resources(s, Fold(2, 16, style))
    for w, a in ((2, 2), (4, 4), (2, 4), (4, 2)):
        assert at(2 * w, a).luts > at(w, a).luts and at(w, 2 * a).luts > at(w, a).luts
        assert at(2 * w, a).ffs >= at(w, a).ffs and at(w, 2 * a).ffs >= at(w, a).ffs


def test_plumbing_grows_with_width():
    assert estimate.fifo_resources(4, 64).luts > estimate.fifo_resources(4, 8).luts
    assert estimate.fifo_resources(4, 64).ffs > estimate.fifo_resources(4, 8).ffs
    assert estimate.converter_resources(16, 1, 8).ffs > estimate.converter_resources(2, 1, 8).ffs
    assert estimate.window_resources(8, 8, 8, (3, 3), (1, 1), 4, 8).luts > \
        estimate.window_resources(8, 8, 8, (3, 3), (1, 1), 4, 1).luts


def test_block_ram_follows_the_yosys_cost_rule():
    m = estimate.model()
    # a 64-deep, 256-bit weight ROM: 16 blocks cost what its 16384 bits cost in logic, so Yosys
    # keeps it in LUTs (what it did with the digits MLP at SIMD 64), and the lowering builds its
    # weights in as constants
    wide = estimate.stage_terms(DENSE, Fold(1, 64), m)
    assert wide.values["rom_bits"] == 64 * 256 and wide.values["const_lane_bits"] == 64 * 16
    assert wide.values["lane_bits"] == 0 and estimate.weights_in_logic(DENSE, Fold(1, 64), m)
    assert not estimate.weights_in_logic(DENSE, Fold(1, 1), m)
    # fully folded, the same weights are a 4096 x 4 ROM: four 1024 x 4 blocks
    narrow = estimate.stage_terms(DENSE, Fold(1, 1), m)
    assert narrow.values["rom_bits"] == 0
    # weights 4 + input buffer 1 + M0 (24 bits) 2 + offset 2-3 + shift 1 (64 folds: forced into blocks)
    assert 10 <= narrow.bram_blocks <= 12
    assert estimate.stage_resources(DENSE, Fold(1, 1)).bram_bits == narrow.bram_blocks * 4096
    # a 1024-bit layer is constants in logic: no weight memory at all
    small = Stage("fc", "mvau", n=16, k=16, vectors=1, w_bits=4, a_bits=4, simd_of=16)
    assert estimate.stage_terms(small, Fold(16, 16), m).values["const_lane_bits"] == 256 * 16
    # a 4-deep FIFO queue (3 x 32 bits) stays in flip-flops, a deep one goes to block RAM
    assert estimate.fifo_terms(4, 32, m).bram_blocks == 0
    assert estimate.fifo_terms(4, 32, m).values["ffram_bits"] == 96
    assert estimate.fifo_terms(200, 8, m).bram_blocks == 1
    assert estimate.model("ecp5")["block_shapes"][0] == [512, 36]


def test_requantization_dsps():
    m = estimate.model()
    # the constant multiplies of an average pool: fitted DSPs per lane
    gap = Stage("g", "gap", n=16, k=1, vectors=16, a_bits=4)
    assert estimate.stage_resources(gap, Fold(1, 2)).dsps == 2 * estimate.stage_resources(gap, Fold(1, 1)).dsps > 0
    # 4-bit dense of 64 inputs: 14-bit accumulators x 24-bit M0 in two 16 x 16 pieces per PE
    assert estimate.stage_terms(DENSE, Fold(4, 1), m).dsps == 8
    wide = Stage("fc", "mvau", n=64, k=64, vectors=1, w_bits=8, a_bits=8, simd_of=64)
    assert estimate.stage_terms(wide, Fold(1, 1), m).dsps == 4           # 22-bit accumulators
    assert estimate.stage_terms(wide, Fold(1, 1), estimate.model("ecp5")).dsps == 4


def test_resources_add_and_round():
    r = estimate.total([estimate.Resources(1.4, 2, 1, 4096, 1), estimate.Resources(1.4, 0, 0, 0, 0)])
    assert r.rounded() == {"luts": 3, "ffs": 2, "dsps": 1, "bram_bits": 4096, "bram_blocks": 1}
    assert estimate.cost_luts(DENSE, Fold(1, 8)) < estimate.cost_luts(DENSE, Fold(8, 8))   # the folding's cost grows


def test_the_model_files_clock_section_names_timing_kinds():
    """The ``fmax`` section bench/calibrate_fmax.py writes: per family, clocks of kinds that
    `estimate.timing_kinds` can produce, read back by `estimate.fmax_by_kind`."""
    doc = _json()
    assert set(doc.get("fmax", {})) <= {"ice40", "ecp5"}
    for family, section in doc.get("fmax", {}).items():
        assert estimate.fmax_by_kind(family) == section["kinds"]
        # each kind was critical in at least one build, and the source line says how many
        assert section["builds"] >= len(section["kinds"]) and f"of {section['builds']} routed builds" in section["source"]
        for kind, mhz in section["kinds"].items():
            # a full device lowers it (the fill derating applies to each kind's clock)
            assert estimate.fmax_estimate(family, 1.0, {kind}) < mhz, (family, kind)
            # in MHz and a clock the family's parts reach: within a factor of two of its default
            base = estimate.FMAX_MHZ[family]
            assert base / 2 <= mhz <= 2 * base, (family, kind, mhz)
            # and what the estimate takes for a design that holds only this kind, at low fill
            assert estimate.fmax_estimate(family, 0.5, {kind}) == mhz, (family, kind)
            if kind.startswith("requant."):
                assert kind.split(".", 1)[1] in estimate.REQUANT_MODES, kind
            else:
                assert kind in estimate.PLUMBING_KINDS + estimate.TOP_KINDS + (
                    "mvau", "vvau", "window", "maxpool", "avgpool", "gap", "add", "bias_add"), kind


def _tree_ff_bits(simd, w_bits, a_bits, registers):
    """Flip-flop bits of a built `MacArray`'s adder-tree registers (run-time weights, one PE),
    counted in its RTL: every ``$dff`` whose output is a ``pe0_..._r<k>`` group register."""
    import re

    from amaranth.back import rtlil

    from qfab.hw._arith import Encoding
    from qfab.hw.mac import MacArray
    mac = MacArray(1, simd, w_bits=w_bits, w_encoding=Encoding.SIGNED, a_bits=a_bits,
                   a_encoding=Encoding.UNSIGNED, beats=4, tree_registers=registers)
    text = rtlil.convert(mac, name="top")
    bits = 0
    for cell in re.finditer(r"cell \$\w*dff\w* \S+\n(.*?)\n\s*end", text, re.S):
        q = re.search(r"connect \\Q \\(\S+)", cell.group(1))
        if q and re.fullmatch(r"pe0(_s)*_r\d+", q.group(1)):
            bits += int(re.search(r"parameter \\WIDTH (\d+)", cell.group(1)).group(1))
    return bits


@pytest.mark.parametrize("simd, bits, registers", [(64, 8, 4), (16, 8, 3), (32, 4, 3), (8, 4, 2)])
def test_tree_register_estimate_follows_the_built_trees(simd, bits, registers):
    """`estimate.tree_register_resources`, the flip-flops that register levels beyond the first
    add to an MVAU's adder trees (counted on the ECP5), against the RTL of the `MacArray` with
    those levels and with one. The cuts are counted exactly, the groups' widths as the digits
    designs' ROM lanes have them, narrower than these lanes of run-time weights (every value):
    30 % below to 10 % above."""
    stage = Stage("fc", "mvau", n=8, k=simd * 4, vectors=1, w_bits=bits, a_bits=bits, simd_of=simd)
    tiles = (-(-bits // 2)) ** 2       # product_tiles: 2 x 2 blocks of the bit grid
    est = estimate.tree_register_resources(stage, Fold(1, simd), registers, tiles, True).ffs
    built = _tree_ff_bits(simd, bits, bits, registers) - _tree_ff_bits(simd, bits, bits, 1)
    assert built > 0 and 0.7 * built <= est <= 1.1 * built, (est, built)
    assert estimate.tree_register_resources(stage, Fold(1, simd), 1, tiles, True).ffs == 0
