"""Choosing quantization ranges: activations from calibration data, weights per channel.

Activation ranges by min-max, percentile, or MSE-optimal clipping (the clip that minimises the
mean squared error between the calibration values and their quantize-dequantize). Weights are
symmetric per output channel, with an MSE-optimal scale search (which matters at 2 to 4 bits).
"""

import numpy as np

from . import intops
from .build import activation_type

__all__ = ["METHODS", "activation_range", "quantize_weight_rows", "fake_quant"]

METHODS = ("minmax", "percentile", "mse")
MAX_SAMPLES = 1 << 18
_CLIP_GRID = np.linspace(0.25, 1.0, 61)


def fake_quant(values, qtype):
    q = intops.clamp(np.rint(values / qtype.scale) + qtype.zero_point, qtype.qmin, qtype.qmax)
    return (q - qtype.zero_point) * qtype.scale


def activation_range(values, method="minmax", bits=8, signed=False, percentile=99.99, seed=0):
    """``(lo, hi)``: the real range to quantize ``values`` (any shape) to ``bits`` bits."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size > MAX_SAMPLES:
        v = np.random.default_rng(seed).choice(v, MAX_SAMPLES, replace=False)
    lo, hi = min(float(v.min(initial=0.0)), 0.0), max(float(v.max(initial=0.0)), 0.0)
    if method == "minmax":
        return lo, hi
    if method == "percentile":
        p_lo = float(np.percentile(v, 100.0 - percentile)) if lo < 0 else 0.0
        return min(p_lo, 0.0), max(float(np.percentile(v, percentile)), 0.0)
    if method == "mse":
        best, best_err = (lo, hi), np.inf
        for a in _CLIP_GRID:
            qt = activation_type(bits, a * lo, a * hi, signed)
            err = float(np.mean((fake_quant(v, qt) - v) ** 2))
            if err < best_err:
                best, best_err = (a * lo, a * hi), err
        return best
    raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, not {method!r}")


def quantize_weight_rows(w, bits, per_channel=True, search=True):
    """Symmetric signed quantization of ``w`` (output channel first).

    Returns ``(w_int, scales)``. ``bits == 1`` gives bipolar weights (+1/-1, scale = mean |w|).
    With ``search``, each channel's clipping is chosen on a grid to minimise the squared error.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"weight bits must be 1 to 8, not {bits}")
    rows = np.asarray(w, dtype=np.float64).reshape(w.shape[0], -1)
    if not per_channel:
        rows_for_scale = np.broadcast_to(rows.reshape(1, -1), (1, rows.size))
    else:
        rows_for_scale = rows
    if bits == 1:
        scales = np.maximum(np.abs(rows_for_scale).mean(axis=1), 1e-12)
        scales = np.broadcast_to(scales, (rows.shape[0],)).copy()
        q = np.where(rows >= 0, 1, -1)
        return q.reshape(w.shape).astype(np.int64), scales.astype(np.float32).astype(np.float64)
    qmin, qmax = intops.qrange(bits, True)
    amax = np.maximum(np.abs(rows_for_scale).max(axis=1), 1e-12)
    grid = _CLIP_GRID if search else np.array([1.0])
    best_scale = amax / qmax
    best_err = np.full(amax.shape, np.inf)
    for a in grid:
        scale = np.float32(a) * amax / qmax
        src = rows_for_scale
        q = np.clip(np.rint(src / scale[:, None]), qmin, qmax)
        err = ((q * scale[:, None] - src) ** 2).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
    scales = np.broadcast_to(best_scale, (rows.shape[0],)).astype(np.float32).astype(np.float64)
    q = np.clip(np.rint(rows / scales[:, None]), qmin, qmax).astype(np.int64)
    return q.reshape(w.shape), scales
