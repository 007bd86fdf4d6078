"""Numpy models and simulation helpers for the dataflow hardware tests (window, pool, add, top).

The models follow docs/semantics.md literally (padding, window order, requantization through
`qfab.compiler.intops`), independently of how the hardware orders its work.
"""

import numpy as np
from amaranth import signed, unsigned
from amaranth.sim import Simulator
from hypothesis import strategies as st

from qfab.compiler import intops

__all__ = ["element_shape", "codes", "beats", "unbeat", "simulate", "windows_model",
           "out_size", "maxpool_model", "avgpool_model", "add_model", "shapes"]


def element_shape(bits, is_signed):
    return signed(bits) if is_signed else unsigned(bits)


def codes(rng, shape_tuple, bits, is_signed):
    """Random codes of a type, int64."""
    lo, hi = intops.qrange(bits, is_signed)
    return rng.integers(lo, hi + 1, size=shape_tuple, dtype=np.int64)


def beats(elements, n):
    """A flat sequence of elements as beats of ``n`` (lists of Python ints)."""
    flat = [int(v) for v in np.asarray(elements).reshape(-1)]
    assert len(flat) % n == 0
    return [flat[k:k + n] for k in range(0, len(flat), n)]


def unbeat(received):
    """Beats (lists of ints) back to a flat int64 array."""
    return np.array([v for beat in received for v in beat], dtype=np.int64)


def simulate(dut, *testbenches, background=(), max_cycles=100_000):
    """Run async testbenches side by side until they all finish; fail after ``max_cycles``.
    ``background``: testbenches (monitors) that run alongside and do not keep the run going."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def watchdog(ctx):
        await ctx.delay(max_cycles * 1e-6)
        raise AssertionError(f"testbenches did not finish in {max_cycles} cycles (deadlock?)")

    for tb in testbenches:
        sim.add_testbench(tb)
    for tb in (*background, watchdog):
        sim.add_testbench(tb, background=True)
    sim.run()


def out_size(size, kernel, stride, pad_before, pad_after):
    return (size + pad_before + pad_after - kernel) // stride + 1


def windows_model(x, kernel, stride, padding, pad_value):
    """Flattened windows of a channels-last map, ``(HO, WO, KH*KW*C)`` in ``(ky, kx, c)`` order."""
    kh, kw = kernel
    sh, sw = stride
    top, left, bottom, right = padding
    h, w, c = x.shape
    xp = np.full((h + top + bottom, w + left + right, c), pad_value, dtype=np.int64)
    xp[top:top + h, left:left + w] = x
    ho, wo = out_size(h, kh, sh, top, bottom), out_size(w, kw, sw, left, right)
    out = np.empty((ho, wo, kh * kw * c), dtype=np.int64)
    for oy in range(ho):
        for ox in range(wo):
            out[oy, ox] = xp[oy * sh:oy * sh + kh, ox * sw:ox * sw + kw].reshape(-1)
    return out


def maxpool_model(windows, channels, lo, hi):
    """``windows`` of shape ``(..., K*C)`` in ``(k, c)`` order; per-channel max, clamped."""
    win = windows.reshape(windows.shape[:-1] + (-1, channels))
    return intops.clamp(win.max(axis=-2), lo, hi)


def avgpool_model(windows, channels, zx, m0, n, zy, lo, hi):
    """Sum of ``x - zx`` over each window per channel, then `intops.requantize`."""
    win = windows.reshape(windows.shape[:-1] + (-1, channels))
    acc = (win - zx).sum(axis=-2)
    return intops.requantize(acc, m0, n, zy, lo, hi)


def add_model(a, b, za, zb, ma, mb, n, zy, lo, hi):
    acc = ma * (np.asarray(a, dtype=np.int64) - za) + mb * (np.asarray(b, dtype=np.int64) - zb)
    return intops.clamp(zy + intops.round_shift(acc, n), lo, hi)


@st.composite
def shapes(draw, max_bits=8):
    """An element type: (bits, signed)."""
    return draw(st.integers(1, max_bits)), draw(st.booleans())
