"""qfab.base: integer ranges and widths against brute force, and the shared limits."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from qfab.base import extras, ints, limits
from qfab.base.errors import QfabError

SETTINGS = settings(max_examples=300, deadline=None)


def _codes(bits, signed):
    """Every value of a ``bits``-bit code, by enumerating its bit patterns."""
    values = range(1 << bits)
    if signed:
        return [v - (1 << bits) if v >> (bits - 1) else v for v in values]
    return list(values)


def _smallest_width(lo, hi, signed):
    """The first width whose enumerated codes contain ``lo`` and ``hi``."""
    return next(b for b in range(1, 64) if {lo, hi} <= set(_codes(b, signed)))


# ---- code_range ------------------------------------------------------------------------------

@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", range(1, 13))
def test_code_range_against_enumeration(bits, signed):
    codes = _codes(bits, signed)
    assert ints.code_range(bits, signed) == (min(codes), max(codes))


@pytest.mark.parametrize("bits", [1, 16, 32, 33, 64])
def test_code_range_wide(bits):
    assert ints.code_range(bits, True) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert ints.code_range(bits, False) == (0, 2**bits - 1)


def test_code_range_numpy_integer_gives_python_ints():
    lo, hi = ints.code_range(np.int64(8), True)
    assert (lo, hi) == (-128, 127)
    assert type(lo) is int and type(hi) is int


@pytest.mark.parametrize("signed", [False, True])
def test_code_range_bipolar(signed):
    assert ints.code_range(1, signed, bipolar=True) == (-1, 1)
    with pytest.raises(ValueError, match=r"^a bipolar type has 1 bit, not 2$"):
        ints.code_range(2, signed, bipolar=True)


@pytest.mark.parametrize("bits", [0, -1, 2.0, "8", None, True])
def test_code_range_rejects_bad_bits(bits):
    with pytest.raises(ValueError, match=r"^bits must be a positive integer, not "):
        ints.code_range(bits, True)


@pytest.mark.parametrize("bits", [0, 9, 8.0])
def test_code_range_max_bits(bits):
    with pytest.raises(ValueError, match=r"^bits must be an integer from 1 to 8, not "):
        ints.code_range(bits, False, max_bits=8)
    assert ints.code_range(8, False, max_bits=8) == (0, 255)


# ---- bits_for_range --------------------------------------------------------------------------

@SETTINGS
@given(a=st.integers(-3000, 3000), b=st.integers(-3000, 3000))
@example(a=0, b=0)
@example(a=-1, b=0)
@example(a=0, b=1)
@example(a=-128, b=127)
@example(a=-129, b=127)
@example(a=-128, b=128)
def test_bits_for_range_is_the_smallest_width(a, b):
    lo, hi = min(a, b), max(a, b)
    assert ints.bits_for_range(lo, hi, signed=True) == _smallest_width(lo, hi, True)
    if lo >= 0:
        assert ints.bits_for_range(lo, hi, signed=False) == _smallest_width(lo, hi, False)
        assert ints.bits_for_range(lo, hi) == ints.bits_for_range(lo, hi, signed=False)
    else:
        assert ints.bits_for_range(lo, hi) == ints.bits_for_range(lo, hi, signed=True)


@SETTINGS
@given(a=st.integers(-(2**100), 2**100), b=st.integers(-(2**100), 2**100), signed=st.booleans())
def test_bits_for_range_holds_the_range_and_no_smaller_width_does(a, b, signed):
    lo, hi = sorted((a, b) if signed else (abs(a), abs(b)))
    width = ints.bits_for_range(lo, hi, signed=signed)
    c_lo, c_hi = ints.code_range(width, signed)
    assert c_lo <= lo and hi <= c_hi
    if width > 1:
        c_lo, c_hi = ints.code_range(width - 1, signed)
        assert lo < c_lo or hi > c_hi


def test_bits_for_range_rejects_bad_ranges():
    with pytest.raises(ValueError, match=r"^the range's lo must not exceed its hi, not 2 > 1$"):
        ints.bits_for_range(2, 1)
    with pytest.raises(ValueError, match=r"^an unsigned width cannot hold -1$"):
        ints.bits_for_range(-1, 1, signed=False)


# ---- acc_bits --------------------------------------------------------------------------------

@SETTINGS
@given(bound=st.integers(0, 5000))
@example(bound=0)
@example(bound=1)
@example(bound=2**61)
def test_acc_bits_is_the_semantics_formula(bound):
    width = ints.acc_bits(bound)
    assert width == 1 + max(1, bound.bit_length())          # docs/semantics.md, section 5
    if bound:
        assert width == ints.bits_for_range(-bound, bound)   # the smallest, for bound >= 1
    else:
        assert width == 2


@pytest.mark.parametrize("bound", [-1, 1.5, "3", None, True])
def test_acc_bits_rejects_bad_bounds(bound):
    with pytest.raises(ValueError, match=r"^bound must be a non-negative integer, not "):
        ints.acc_bits(bound)


def test_acc_bits_takes_numpy_integers():
    assert ints.acc_bits(np.int64(127)) == 8


# ---- the modules that wrap these, and the shared limits --------------------------------------

def test_wrappers_agree():
    from amaranth.hdl import signed, unsigned

    from qfab.compiler import intops
    from qfab.hw import _arith, _params
    for bits in range(1, 9):
        for is_signed in (False, True):
            want = ints.code_range(bits, is_signed)
            assert intops.qrange(bits, is_signed) == want
            assert _params.code_range(signed(bits) if is_signed else unsigned(bits)) == want
            encoding = _arith.Encoding.SIGNED if is_signed else _arith.Encoding.UNSIGNED
            assert _arith.code_range(bits, encoding) == want
    assert _arith.code_range(1, _arith.Encoding.BIPOLAR) == (-1, 1)
    assert intops.acc_bits is ints.acc_bits and _arith.acc_width is ints.acc_bits


def test_logic_weight_limit_is_one_number():
    from qfab.compiler import estimate
    assert estimate.model()["logic_weight_limit_bits"] == limits.LOGIC_WEIGHT_LIMIT_BITS


def test_require_imports_or_names_the_extra():
    import json
    assert extras.require("json", "plot", "a plot") is json
    with pytest.raises(QfabError, match=r"^a plot needs qfab_no_such_module, which is not installed .*"
                                        r"pip install \"qfab\[plot\]\""):
        extras.require("qfab_no_such_module.pyplot", "plot", "a plot")


def test_base_imports_without_third_party_packages():
    """qfab.base loads with numpy, amaranth and the rest of qfab blocked."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('numpy', 'amaranth', 'onnx', 'torch'):\n"
        "            raise ImportError(f'blocked: {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import qfab.base.errors, qfab.base.extras, qfab.base.ints, qfab.base.limits\n"
        "assert qfab.base.ints.code_range(4, True) == (-8, 7)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
