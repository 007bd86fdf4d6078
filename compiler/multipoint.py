"""Multipoint quantization: each output channel's weight vector as a sum of low-bit points,
``w_c ~ sum_i a_i q_i`` (shared/papers/002: "mixed precision without mixed precision").

Points are found greedily on the residual: each new point is the nearest-grid rounding of the
residual at the best scale on a grid. The number of points adapts per output channel: starting
from one point everywhere, extra points go one at a time to the channel whose *output* error on
calibration inputs, ``||X (w_c - w^_c)||^2``, is largest, until the layer's budget of extra points
(a fraction of its channels) is spent.

In integer form each channel has one requantization scale ``s_c`` and each point an integer
multiplier ``m_ic`` with ``a_ic ~ m_ic * s_c``, so the hardware computes
``sum_i m_ic * (q_i . x)`` with the same low-bit MAC array (docs/semantics.md, Dense).
"""

import heapq

import numpy as np

from . import intops

__all__ = ["greedy_point", "multipoint_rows", "im2col"]

_SCALE_GRID = np.linspace(0.2, 1.0, 41)


def greedy_point(r, bits):
    """Best ``(scale, q)`` for residual rows ``r`` ``(C, K)``: nearest rounding at the grid scale
    that minimises ``||r - scale * q||^2`` per row."""
    qmin, qmax = intops.qrange(bits, True) if bits > 1 else (-1, 1)
    amax = np.maximum(np.abs(r).max(axis=1), 1e-12)
    best_q = np.zeros(r.shape, np.int64)
    best_s = np.zeros(r.shape[0])
    best_err = np.full(r.shape[0], np.inf)
    for a in _SCALE_GRID:
        s = a * amax / max(qmax, 1)
        q = np.clip(np.rint(r / s[:, None]), qmin, qmax)
        if bits == 1:
            q = np.where(r >= 0, 1, -1)
            s = np.abs(r).mean(axis=1) + 1e-12
        err = ((r - s[:, None] * q) ** 2).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s = np.where(better, s, best_s)
        best_q[better] = q[better]
    return best_s, best_q


def _output_error(x, w, w_hat):
    d = w - w_hat                               # (C, K)
    return ((x @ d.T) ** 2).mean(axis=0)        # (C,)


def multipoint_rows(w, bits, x, budget, max_points=4, mult_bits=8):
    """Multipoint-quantize weight rows ``w`` ``(C, K)`` against calibration inputs ``x`` ``(n, K)``.

    ``budget``: extra points as a fraction of the channels (0.1 -> 10 % of channels get a second
    point, or fewer get more). Returns ``(q (P, C, K), multipliers (P, C), scales (C,))`` with
    ``w_c ~ scales[c] * sum_p multipliers[p, c] * q[p, c]`` and unused points zero.
    """
    if not 0.0 <= budget <= max_points - 1:
        raise ValueError(f"multipoint budget must be between 0 and {max_points - 1}, not {budget!r}")
    w = np.asarray(w, np.float64)
    c, k = w.shape
    x = np.asarray(x, np.float64)
    scales_pts = np.zeros((max_points, c))
    q_pts = np.zeros((max_points, c, k), np.int64)
    s0, q0 = greedy_point(w, bits)
    scales_pts[0], q_pts[0] = s0, q0
    approx = s0[:, None] * q0
    count = np.ones(c, np.int64)
    extra = int(round(budget * c))
    err = _output_error(x, w, approx)
    heap = [(-e, i) for i, e in enumerate(err)]
    heapq.heapify(heap)
    while extra > 0 and heap:
        _, i = heapq.heappop(heap)
        if count[i] >= max_points:
            continue
        s, q = greedy_point((w[i] - approx[i])[None], bits)
        p = count[i]
        scales_pts[p, i], q_pts[p, i] = s[0], q[0]
        approx[i] += s[0] * q[0]
        count[i] += 1
        extra -= 1
        e = _output_error(x, w[i:i + 1], approx[i:i + 1])[0]
        heapq.heappush(heap, (-e, i))
    points = int(count.max())
    # integer multipliers: the channel scale makes the largest point scale 2^(mult_bits-1) - 1
    mmax = (1 << (mult_bits - 1)) - 1
    top = np.maximum(np.abs(scales_pts[:points]).max(axis=0), 1e-12)
    ch_scale = (top / mmax).astype(np.float32).astype(np.float64)
    mult = np.rint(scales_pts[:points] / ch_scale).astype(np.int64)
    mult[np.arange(points)[:, None] >= count[None, :]] = 0
    q = q_pts[:points]
    q[mult == 0] = 0 if bits > 1 else 1      # bipolar codes have no zero; m = 0 disables them
    return q, mult, ch_scale


def im2col(x, kernel, stride, padding, samples=4096, seed=0):
    """Flattened windows ``(n, KH*KW*C)`` of channels-last batch ``x`` (zero padding), subsampled."""
    from .ops.conv2d import float_windows as _windows
    win = _windows(np.asarray(x, np.float64), kernel, stride, padding)
    rows = win.reshape(-1, win.shape[3] * win.shape[4] * win.shape[5])
    if len(rows) > samples:
        rows = rows[np.random.default_rng(seed).choice(len(rows), samples, replace=False)]
    return rows
