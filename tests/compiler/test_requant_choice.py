# amaranth: UnusedElaboratable=no
# (engines are built here only to read their latency and interval)
"""The compiler's choice of requantization per MVAU stage (`estimate.choose_requant`): what it
costs, that it keeps the stage's rate, and that the engine it names has the interval it assumed."""

import pytest

from qfab.compiler import estimate
from qfab.compiler.plan import Fold, Stage
from qfab.hw.requant import Requant, RequantMode, csd_digits
from qfab.hw.threshold import ThresholdRequant

DENSE = Stage("d", "mvau", 64, 64, 1, w_bits=8, a_bits=8)


def test_folded_8_bit_layer_on_ice40_uses_no_dsps():
    choice = estimate.choose_requant(DENSE, Fold(1, 1), "ice40", levels=255, m0_bits=24)
    assert (choice.mode, choice.digit_bits) == ("shift_add", 1)
    res = estimate.resources(estimate.stage_terms(DENSE, Fold(1, 1), requant=choice))
    assert res.dsps == 0
    assert estimate.resources(estimate.stage_terms(DENSE, Fold(1, 1))).dsps == 4     # multiply: 21 x 25 bits


def test_one_cycle_per_beat_multiplies():
    # SIMD = K: one cycle per output beat, no time for a multi-cycle unit; 255 comparators cost more
    assert estimate.choose_requant(DENSE, Fold(1, 64), "ice40", levels=255, m0_bits=24).mode == "multiply"


def test_ecp5_multiplies():
    assert estimate.choose_requant(DENSE, Fold(1, 1), "ecp5", levels=255, m0_bits=24).mode == "multiply"


@pytest.mark.parametrize("fold", [Fold(1, 1), Fold(2, 8), Fold(4, 16), Fold(1, 32), Fold(2, 2, "bit_serial")])
@pytest.mark.parametrize("levels,m0_bits", [(255, 24), (15, 24), (3, 9), (1, 1)])
def test_options_keep_the_rate(fold, levels, m0_bits):
    cycles = estimate.beat_cycles(DENSE, fold)
    options = estimate.requant_options(DENSE, fold, levels=levels, m0_bits=m0_bits)
    assert {"multiply", "thresholds"} <= {c.mode for c in options}
    for choice in options:
        assert choice.interval <= cycles, choice
    assert estimate.choose_requant(DENSE, fold, "ice40", levels=levels, m0_bits=m0_bits) in options


@pytest.mark.parametrize("choice", [estimate.RequantChoice("shift_add", 255, 24, 1),
                                    estimate.RequantChoice("shift_add", 15, 13, 4),
                                    estimate.RequantChoice("search", 15, 24), estimate.RequantChoice("search", 200, 24),
                                    estimate.RequantChoice("thresholds", 3, 24),
                                    estimate.RequantChoice("multiply", 255, 24)])
def test_interval_is_the_engines(choice):
    m0 = (1 << choice.m0_bits) - 1
    params = dict(acc_bits=12, bias=[0], m0=[m0], shift=[30], zero_point=0, lo=0, hi=choice.levels, out_bits=8,
                  out_signed=False, m_bits=24, mode=RequantMode(choice.mode))
    if choice.mode in ("multiply", "shift_add"):
        unit = Requant(1, 1, digit_bits=choice.digit_bits, **params)
    else:
        unit = ThresholdRequant(1, 1, **params)
    assert unit.interval == choice.interval


POOL = Stage("p", "avgpool", 16, 4, 9, a_bits=8)
ADD = Stage("a", "add", 64, 1, 1, a_bits=8)


def test_pools_and_adds_on_ice40_use_no_dsps():
    pool = estimate.choose_const_requant(POOL, Fold(1, 2), "ice40", levels=255, multipliers=[11184811])
    assert pool.mode == "shift_add" and pool.adders == len(csd_digits(11184811)) - 1
    assert estimate.stage_resources(POOL, Fold(1, 2), requant=pool).dsps == 0
    assert estimate.stage_resources(POOL, Fold(1, 2)).dsps > 0                  # multiply: fitted DSPs
    # 4-bit output of a 12-bit sum: 15 comparisons are cheaper than the adders
    assert estimate.choose_const_requant(POOL, Fold(1, 2), "ice40", levels=15, multipliers=[11184811]).mode == \
        "thresholds"
    add = estimate.choose_const_requant(ADD, Fold(1, 4), "ice40", levels=255, multipliers=[13981013, 9786709],
                                        thresholds=False)
    assert add.mode == "shift_add"
    assert estimate.stage_resources(ADD, Fold(1, 4), requant=add).dsps == 0


def test_pools_and_adds_on_ecp5_multiply():
    assert estimate.choose_const_requant(POOL, Fold(1, 2), "ecp5", levels=255, multipliers=[11184811]).mode == \
        "multiply"
    assert estimate.choose_const_requant(ADD, Fold(1, 4), "ecp5", levels=255, multipliers=[13981013, 9786709],
                                         thresholds=False).mode == "multiply"


def test_multiplier_one_needs_nothing():
    choice = estimate.choose_const_requant(POOL, Fold(1, 1), "ice40", levels=255, multipliers=[1])
    assert choice.mode == "multiply"           # no multiply at all: nothing to save
