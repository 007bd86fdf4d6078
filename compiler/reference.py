"""The bit-exact numpy reference: executes a `Graph` exactly as docs/semantics.md says.

One function per node kind, batched and vectorized. Dot products of codes run as float64 matrix
products, which are exact: every product is below 2^16 in magnitude and every fan-in below 2^37,
so all partial sums stay under 2^53. Bias, point multipliers and requantization are int64.

This is the oracle of every hardware test, so it never approximates.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import intops
from qfab.base.errors import QfabError
from .ir import Add, AvgPool, Conv2d, Dense, GlobalAvgPool, Layout, MaxPool, Reshape

__all__ = ["run", "run_float", "quantize_inputs", "dequantize_outputs", "CHUNK"]

CHUNK = 512  # images per batch chunk: bounds the memory of im2col


def _exact_int(a):
    return np.rint(a).astype(np.int64)


def _accumulate(node, dots):
    """``bias + sum_p m[p] * dots[p]`` with ``dots`` of shape ``(P, ..., C)``."""
    acc = np.broadcast_to(node.bias, dots.shape[1:]).astype(np.int64)
    for p in range(node.points):
        acc = acc + node.multipliers[p] * dots[p]
    return acc


def dense(node, x, tin, tout):
    xs = (x - tin.qtype.zero_point).astype(np.float64)
    rows = node.weight_rows().astype(np.float64)                       # (P, N, K)
    dots = np.stack([_exact_int(xs @ rows[p].T) for p in range(node.points)])
    return node.requant.apply(_accumulate(node, dots), tout.qtype.zero_point)


def _pad(x, padding, value):
    top, left, bottom, right = padding
    if not any(padding):
        return x
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def _windows(x, kernel, stride, padding, pad_value):
    """``(B, HO, WO, KH, KW, C)`` views of the padded input."""
    xp = _pad(x, padding, pad_value)
    win = sliding_window_view(xp, kernel, axis=(1, 2))                 # (B, H', W', C, KH, KW)
    win = win[:, ::stride[0], ::stride[1]]
    return win.transpose(0, 1, 2, 4, 5, 3)


def conv2d(node, x, tin, tout):
    zx = tin.qtype.zero_point
    win = _windows(x, node.kernel, node.stride, node.padding, zx)
    b, ho, wo, kh, kw, c = win.shape
    g, cout, p = node.groups, node.out_channels, node.points
    cols = (win.astype(np.float64) - zx)
    if g == 1:
        cols = cols.reshape(b * ho * wo, kh * kw * c)
        rows = node.weight_rows().astype(np.float64)                   # (P, Cout, fan_in)
        dots = np.stack([_exact_int(cols @ rows[q].T) for q in range(p)])
    else:
        cg, og = c // g, cout // g
        cols = cols.reshape(b * ho * wo, kh, kw, g, cg)
        w = node.weights.astype(np.float64).reshape(p, g, og, kh, kw, cg)
        dots = _exact_int(np.einsum("nyxgc,pgoyxc->pngo", cols, w, optimize=True))
    dots = dots.reshape(p, b, ho, wo, cout)
    return node.requant.apply(_accumulate(node, dots), tout.qtype.zero_point)


def maxpool(node, x, tin, tout):
    q = tin.qtype
    win = _windows(x, node.kernel, node.stride, node.padding, q.qmin)
    y = win.max(axis=(3, 4))
    lo = q.qmin if node.lo is None else node.lo
    hi = q.qmax if node.hi is None else node.hi
    return intops.clamp(y, lo, hi)


def avgpool(node, x, tin, tout):
    zx = tin.qtype.zero_point
    win = _windows(x, node.kernel, node.stride, node.padding, zx)
    acc = (win.astype(np.int64) - zx).sum(axis=(3, 4))
    return node.requant.apply(acc, tout.qtype.zero_point)


def global_avgpool(node, x, tin, tout):
    acc = (x.astype(np.int64) - tin.qtype.zero_point).sum(axis=(1, 2), keepdims=True)
    return node.requant.apply(acc, tout.qtype.zero_point)


def add(node, a, b, ta, tb, tout):
    acc = (node.m_a * (a.astype(np.int64) - ta.qtype.zero_point)
           + node.m_b * (b.astype(np.int64) - tb.qtype.zero_point))
    return intops.clamp(tout.qtype.zero_point + intops.round_shift(acc, node.shift), node.lo, node.hi)


def reshape(node, x, tin, tout):
    return x.reshape(x.shape[0], *tout.shape)


_KERNELS = {
    Dense: dense, Conv2d: conv2d, MaxPool: maxpool, AvgPool: avgpool,
    GlobalAvgPool: global_avgpool, Reshape: reshape,
}


def _check_codes(graph, name, x):
    t = graph.tensors[name]
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise QfabError(f"input {name!r} must hold integer codes, not {x.dtype}")
    if x.shape[1:] != tuple(t.shape):
        raise QfabError(f"input {name!r} has shape {x.shape[1:]} per item, the model expects {tuple(t.shape)}")
    q = t.qtype
    if x.size and (x.min() < q.qmin or x.max() > q.qmax):
        raise QfabError(f"input {name!r} has codes outside [{q.qmin}, {q.qmax}] of {q.describe()}")
    return x.astype(np.int64)


def _run_chunk(graph, values, keep_all):
    env = dict(values)
    for node in graph.nodes:
        tensors = [graph.tensors[n] for n in (*node.inputs, node.output)]
        if isinstance(node, Add):
            env[node.output] = add(node, env[node.a], env[node.b], *tensors)
        else:
            env[node.output] = _KERNELS[type(node)](node, env[node.input], *tensors)
    return env if keep_all else {name: env[name] for name in graph.outputs}


def run(graph, inputs, *, keep_all=False):
    """Run a batch of integer codes through ``graph``.

    ``inputs``: an array for the single graph input, or a dict by input name; each of shape
    ``(B, *tensor.shape)`` in the IR's channels-last layout. Returns a dict of int64 arrays by
    output name (every tensor when ``keep_all``).
    """
    if not isinstance(inputs, dict):
        if len(graph.inputs) != 1:
            raise QfabError(f"the model has {len(graph.inputs)} inputs: pass a dict by name")
        inputs = {graph.inputs[0]: inputs}
    values = {name: _check_codes(graph, name, inputs[name]) for name in graph.inputs}
    batch = len(next(iter(values.values())))
    parts = [_run_chunk(graph, {k: v[i:i + CHUNK] for k, v in values.items()}, keep_all)
             for i in range(0, max(batch, 1), CHUNK)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def to_ir_layout(graph, x):
    if graph.input_layout is Layout.NCHW and x.ndim == 4:
        return x.transpose(0, 2, 3, 1)
    return x


def _from_ir_layout(graph, y):
    if graph.input_layout is Layout.NCHW and y.ndim == 4:
        return y.transpose(0, 3, 1, 2)
    return y


def quantize_inputs(graph, x):
    """Float input batch (in the original model's layout) -> integer codes, channels-last."""
    name = graph.inputs[0]
    t = graph.tensors[name]
    x = to_ir_layout(graph, np.asarray(x))
    if x.shape[1:] != tuple(t.shape):
        raise QfabError(f"input has shape {x.shape[1:]} per item (after layout conversion), "
                        f"the model expects {tuple(t.shape)} channels-last")
    q = t.qtype
    return intops.quantize_float(x, q.scale, q.zero_point, q.qmin, q.qmax)


def dequantize_outputs(graph, y, name=None):
    """Integer output codes -> floats in the original model's layout."""
    name = graph.outputs[0] if name is None else name
    q = graph.tensors[name].qtype
    return _from_ir_layout(graph, intops.dequantize(y, q.scale, q.zero_point))


def output_codes(graph, y):
    """Integer output codes in the original model's layout."""
    return _from_ir_layout(graph, y)


def run_float(graph, x):
    """Float batch in, dequantized float outputs of the first output, original layout."""
    y = run(graph, quantize_inputs(graph, x))[graph.outputs[0]]
    return dequantize_outputs(graph, y)
