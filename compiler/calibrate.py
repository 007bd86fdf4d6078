"""Choosing quantization ranges: activations from calibration data, weights per channel.

Activation ranges by min-max, percentile, or MSE-optimal clipping (the clip that minimises the
mean squared error between the calibration values and their quantize-dequantize). Weights are
symmetric per output channel, with an MSE-optimal scale search (which matters at 2 to 4 bits).
"""

import numpy as np

from qfab.base.errors import QfabError

from . import intops
from .build import activation_type

__all__ = ["METHODS", "check_samples", "activation_range", "quantize_weight_rows", "bias_scale_floor", "fake_quant"]

METHODS = ("minmax", "percentile", "mse")
MAX_SAMPLES = 1 << 18
_CLIP_GRID = np.linspace(0.25, 1.0, 61)


def fake_quant(values, qtype):
    q = intops.clamp(np.rint(values / qtype.scale) + qtype.zero_point, qtype.qmin, qtype.qmax)
    return (q - qtype.zero_point) * qtype.scale


def check_samples(x, what="calibration data"):
    """Refuse a batch ``x`` (samples first) holding NaN or an infinity: `QfabError` naming the
    first bad sample and the element inside it (docs/semantics.md, section 1)."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        return
    bad = ~np.isfinite(x)
    if bad.any():
        sample, *element = (int(i) for i in np.argwhere(bad)[0])
        value = x[(sample, *element)]
        samples = int(bad.reshape(len(x), -1).any(axis=1).sum())
        raise QfabError(f"{what}: sample {sample}, element {tuple(element)} is {value} "
                        f"({samples} of {len(x)} samples hold NaN or infinite values); "
                        "calibration needs finite values")


def activation_range(values, method="minmax", bits=8, signed=False, percentile=99.99, seed=0):
    """``(lo, hi)``: the real range to quantize ``values`` (any shape) to ``bits`` bits.

    ``values`` must be finite: a NaN or infinity (in an activation computed from the calibration
    data, say after a float overflow) raises `QfabError`."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(v).all():
        raise QfabError(f"calibration: {int((~np.isfinite(v)).sum())} activation values are NaN or infinite "
                        "(the float network overflowed on the calibration data, or the data or weights are not finite)")
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


def quantize_weight_rows(w, bits, per_channel=True, search=True, min_scales=None):
    """Symmetric signed quantization of ``w`` (output channel first).

    Returns ``(w_int, scales)``. ``bits == 1`` gives bipolar weights (+1/-1, scale = mean |w|).
    With ``search``, each channel's clipping is chosen on a grid to minimise the squared error.
    ``min_scales`` (one per channel, or None) floors the scales, as onnxruntime does so that a
    bias fits 32 bits at scale ``s_in * s_w`` (`bias_scale_floor`): a dead channel (all weights
    near 0) with a bias keeps its bias instead of needing an impossible integer.
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
    if min_scales is not None:
        floor = np.asarray(min_scales, np.float64).reshape(-1)
        scales = np.where(scales < floor, floor.astype(np.float32).astype(np.float64), scales)
        if not per_channel:
            scales = np.full_like(scales, scales.max())
    q = np.clip(np.rint(rows / scales[:, None]), qmin, qmax).astype(np.int64)
    return q.reshape(w.shape), scales


def bias_scale_floor(bias, s_in, limit=(1 << 31) - 1, margin=1.0 + 2.0 ** -10):
    """Per-channel weight scale floor so that ``rint(bias / (s_in * s_w))`` fits ``limit``
    (onnxruntime's ``_adjust_weight_scale_for_int32_bias``), with a small margin for float32
    rounding of the scales. 0 where no floor is needed."""
    b = np.abs(np.asarray(bias, np.float64).reshape(-1))
    floor = b * margin / (float(s_in) * (limit - 1))
    return np.nextafter(floor.astype(np.float32), np.float32(np.inf)).astype(np.float64) * (b > 0)
