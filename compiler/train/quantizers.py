"""Fake quantization with learned step sizes, and the regularizers of quantization-aware training.

- `LsqQuantizer`: ``s * clamp(round(x / s), qmin, qmax)`` with a learned step ``s`` (one per
  tensor, or one per output channel for weights), straight-through rounding and LSQ's gradient
  scale ``1 / sqrt(n * qmax)`` on the step (Esser et al., "Learned Step Size Quantization").
- `msqe`: the mean squared quantization error of weights, with true (not straight-through)
  rounding, so that its gradient pulls each weight toward its nearest grid point and moves the
  step toward the weights.
- `LearnableCoefficient`: ``alpha * R - lambda * log(alpha)`` with ``alpha`` learned (Choi et al.,
  "Learning Sparse Low-Precision Neural Networks With Learnable Regularization"). Its gradient in
  ``alpha`` vanishes at ``alpha = lambda / R``: as the regularized quantity ``R`` shrinks during
  training, ``alpha`` grows and the pull toward the grid gets stronger.
- `partial_l2`: the squared magnitude of the weights below a magnitude threshold (each layer's
  target-sparsity quantile), which drives exactly those weights toward zero before pruning.
"""

import math

import torch
from torch import nn

from .. import intops

__all__ = ["round_ste", "LsqQuantizer", "msqe", "partial_l2", "LearnableCoefficient", "prune_threshold"]

MIN_STEP = 1e-6


def round_ste(x):
    """Round half to even forward, identity backward (straight-through estimator)."""
    return (torch.round(x) - x).detach() + x


def _grad_scale(x, g):
    """``x`` forward, gradient multiplied by ``g`` backward."""
    return (x - x * g).detach() + x * g


class LsqQuantizer(nn.Module):
    """Fake quantizer ``s * clamp(round(x / s), qmin, qmax)`` with learned step ``s``.

    Parameters
    ----------
    bits : int
        Code width, 1 to 8.
    signed : bool
        Two's complement range if true, ``[0, 2^bits - 1]`` otherwise (zero point 0).
    step : array-like
        Initial step: a scalar (per tensor) or one per output channel (axis 0 of the input).
    """

    def __init__(self, bits, signed, step):
        super().__init__()
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(f"bits must be an integer from 1 to 8, not {bits!r}")
        self._bits, self._signed = bits, bool(signed)
        self._qmin, self._qmax = intops.qrange(bits, signed)
        self.step = nn.Parameter(torch.as_tensor(step, dtype=torch.float32).reshape(-1).clone())

    @property
    def bits(self):
        return self._bits

    @property
    def signed(self):
        return self._signed

    @property
    def qrange(self):
        return self._qmin, self._qmax

    def _step(self, x):
        s = self.step.abs().clamp_min(MIN_STEP)
        if self.training:
            # n: one sample's features, or one output channel's weights (x[0] either way)
            s = _grad_scale(s, 1.0 / math.sqrt(x[0].numel() * max(self._qmax, 1)))
        if s.numel() > 1:
            s = s.reshape((-1,) + (1,) * (x.dim() - 1))
        return s

    def codes(self, x):
        """Integer codes of ``x`` (float tensor of whole numbers; straight-through)."""
        return torch.clamp(round_ste(x / self._step(x)), self._qmin, self._qmax)

    def forward(self, x):
        s = self._step(x)
        return torch.clamp(round_ste(x / s), self._qmin, self._qmax) * s

    def exact_step(self):
        """The steps as float32 values in float64 (what the IR's scales hold)."""
        return self.step.detach().abs().clamp_min(MIN_STEP).to(torch.float32).double().numpy()


def msqe(weights, quantizers):
    """Mean over all weights of ``(w - Q(w))^2`` with true rounding (no straight-through)."""
    total, count = 0.0, 0
    for w, q in zip(weights, quantizers):
        s = q.step.abs().clamp_min(MIN_STEP).reshape((-1,) + (1,) * (w.dim() - 1))
        lo, hi = q.qrange
        wq = torch.clamp(torch.round(w / s).detach(), lo, hi) * s
        total = total + ((w - wq) ** 2).sum()
        count += w.numel()
    return total / max(count, 1)


def prune_threshold(weights, sparsity):
    """Per layer, the magnitude at or below which the fraction ``sparsity`` of its weights lies."""
    out = []
    for w in weights:
        mags = w.detach().abs().reshape(-1)
        k = int(round(sparsity * mags.numel()))
        out.append(float(torch.kthvalue(mags, k).values) if k > 0 else -1.0)
    return out


def partial_l2(weights, thresholds):
    """Mean over all weights of ``w^2`` for the weights with ``|w| <= threshold`` of their layer
    (the others count as 0)."""
    total, count = 0.0, 0
    for w, th in zip(weights, thresholds):
        small = (w.detach().abs() <= th).to(w.dtype)
        total = total + (small * w ** 2).sum()
        count += w.numel()
    return total / max(count, 1)


class LearnableCoefficient(nn.Module):
    """``alpha * R - lam * log(alpha)``, ``alpha = exp(log_alpha)`` learned; ``lam`` fixed.

    ``init`` sets ``alpha`` (typically ``lam / R`` at the start, the stationary point).
    """

    def __init__(self, lam, init=1.0):
        super().__init__()
        if not lam > 0:
            raise ValueError(f"lambda must be positive, not {lam!r}")
        if not init > 0:
            raise ValueError(f"the initial coefficient must be positive, not {init!r}")
        self._lam = float(lam)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init), dtype=torch.float32))

    @property
    def lam(self):
        return self._lam

    @property
    def alpha(self):
        return float(self.log_alpha.detach().exp())

    def forward(self, r):
        return self.log_alpha.exp() * r - self._lam * self.log_alpha
