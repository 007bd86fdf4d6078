"""A deliberately slow second reference, written from docs/semantics.md alone.

Plain Python loops over output positions and Python ints (no int64 overflow, no float). Shares
nothing with `qfab.compiler.reference` except the IR; used to check that reference element by
element. One item at a time: a value is a numpy object array of Python ints, channels-last.
"""

import numpy as np

from qfab.compiler.ir import Add, AvgPool, Conv2d, Dense, GlobalAvgPool, MaxPool, Requantize, Reshape

__all__ = ["round_shift", "requantize", "run", "NODE_FUNCTIONS"]


def round_shift(v, n):
    """floor((v + 2^(n-1)) / 2^n); v when n == 0 (Python's >> is a floor)."""
    return v if n == 0 else (v + (1 << (n - 1))) >> n


def requantize(acc, m0, n, zp, lo, hi):
    return min(max(zp + round_shift(acc * m0, n), lo), hi)


def _empty(shape):
    return np.empty(shape, dtype=object)


def _padded(x, top, left, value):
    """A reader of the padded input: (row, col, channel) in padded coordinates."""
    h, w, _ = x.shape

    def read(r, c, ch):
        r, c = r - top, c - left
        if 0 <= r < h and 0 <= c < w:
            return int(x[r, c, ch])
        return value
    return read


def _out_hw(h, w, kernel, stride, padding):
    (kh, kw), (sh, sw), (top, left, bottom, right) = kernel, stride, padding
    return (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1


def dense(node, x, tin, tout):
    zx, zy = tin.qtype.zero_point, tout.qtype.zero_point
    rq = node.requant
    points, n, k = node.weights.shape
    y = _empty((n,))
    for c in range(n):
        acc = int(node.bias[c])
        for p in range(points):
            dot = 0
            for i in range(k):
                dot += int(node.weights[p, c, i]) * (int(x[i]) - zx)
            acc += int(node.multipliers[p, c]) * dot
        y[c] = requantize(acc, int(rq.m0[c]), int(rq.shift[c]), zy, int(rq.lo), int(rq.hi))
    return y


def conv2d(node, x, tin, tout):
    zx, zy = tin.qtype.zero_point, tout.qtype.zero_point
    rq = node.requant
    h, w, cin = x.shape
    points, cout, kh, kw, cg = node.weights.shape
    og = cout // node.groups
    sh, sw = node.stride
    top, left = node.padding[0], node.padding[1]
    ho, wo = _out_hw(h, w, (kh, kw), node.stride, node.padding)
    read = _padded(x, top, left, zx)
    y = _empty((ho, wo, cout))
    for oy in range(ho):
        for ox in range(wo):
            for c in range(cout):
                g = c // og
                acc = int(node.bias[c])
                for p in range(points):
                    dot = 0
                    for ky in range(kh):
                        for kx in range(kw):
                            for ci in range(cg):
                                xv = read(oy * sh + ky, ox * sw + kx, g * cg + ci)
                                dot += int(node.weights[p, c, ky, kx, ci]) * (xv - zx)
                    acc += int(node.multipliers[p, c]) * dot
                y[oy, ox, c] = requantize(acc, int(rq.m0[c]), int(rq.shift[c]), zy, int(rq.lo), int(rq.hi))
    return y


def maxpool(node, x, tin, tout):
    q = tin.qtype
    lo = q.qmin if node.lo is None else node.lo
    hi = q.qmax if node.hi is None else node.hi
    h, w, c = x.shape
    (kh, kw), (sh, sw) = node.kernel, node.stride
    ho, wo = _out_hw(h, w, node.kernel, node.stride, node.padding)
    read = _padded(x, node.padding[0], node.padding[1], q.qmin)
    y = _empty((ho, wo, c))
    for oy in range(ho):
        for ox in range(wo):
            for ch in range(c):
                m = max(read(oy * sh + ky, ox * sw + kx, ch) for ky in range(kh) for kx in range(kw))
                y[oy, ox, ch] = min(max(m, lo), hi)
    return y


def avgpool(node, x, tin, tout):
    zx, zy = tin.qtype.zero_point, tout.qtype.zero_point
    rq = node.requant
    h, w, c = x.shape
    (kh, kw), (sh, sw) = node.kernel, node.stride
    ho, wo = _out_hw(h, w, node.kernel, node.stride, node.padding)
    read = _padded(x, node.padding[0], node.padding[1], zx)
    y = _empty((ho, wo, c))
    for oy in range(ho):
        for ox in range(wo):
            for ch in range(c):
                acc = sum(read(oy * sh + ky, ox * sw + kx, ch) - zx for ky in range(kh) for kx in range(kw))
                y[oy, ox, ch] = requantize(acc, int(rq.m0[0]), int(rq.shift[0]), zy, int(rq.lo), int(rq.hi))
    return y


def global_avgpool(node, x, tin, tout):
    zx, zy = tin.qtype.zero_point, tout.qtype.zero_point
    rq = node.requant
    h, w, c = x.shape
    y = _empty((1, 1, c))
    for ch in range(c):
        acc = sum(int(x[i, j, ch]) - zx for i in range(h) for j in range(w))
        y[0, 0, ch] = requantize(acc, int(rq.m0[0]), int(rq.shift[0]), zy, int(rq.lo), int(rq.hi))
    return y


def add(node, a, b, ta, tb, tout):
    za, zb, zy = ta.qtype.zero_point, tb.qtype.zero_point, tout.qtype.zero_point
    y = _empty(a.shape)
    for idx in np.ndindex(a.shape):
        acc = int(node.m_a) * (int(a[idx]) - za) + int(node.m_b) * (int(b[idx]) - zb)
        y[idx] = min(max(zy + round_shift(acc, int(node.shift)), node.lo), node.hi)
    return y


def reshape(node, x, tin, tout):
    flat = [x[idx] for idx in np.ndindex(x.shape)]           # row-major order
    y = _empty(tout.shape)
    for i, idx in enumerate(np.ndindex(tuple(tout.shape))):
        y[idx] = flat[i]
    return y


def requantize_node(node, x, tin, tout):
    zx, zy = tin.qtype.zero_point, tout.qtype.zero_point
    rq = node.requant
    y = _empty(x.shape)
    for idx in np.ndindex(x.shape):
        y[idx] = requantize(int(x[idx]) - zx, int(rq.m0[0]), int(rq.shift[0]), zy, int(rq.lo), int(rq.hi))
    return y


NODE_FUNCTIONS = {
    Dense: dense, Conv2d: conv2d, MaxPool: maxpool, AvgPool: avgpool,
    GlobalAvgPool: global_avgpool, Add: add, Reshape: reshape, Requantize: requantize_node,
}


def run(graph, inputs):
    """``inputs``: dict of ``(B, *shape)`` code arrays by input name. Returns every tensor, by name,
    as an int64 array ``(B, *shape)`` (exact: codes fit 8 bits)."""
    batch = len(next(iter(inputs.values())))
    results = {name: [] for name in graph.tensors}
    for item in range(batch):
        env = {name: np.asarray(inputs[name][item]).astype(object) for name in graph.inputs}
        for node in graph.nodes:
            tensors = [graph.tensors[n] for n in (*node.inputs, node.output)]
            args = [env[n] for n in node.inputs]
            env[node.output] = NODE_FUNCTIONS[type(node)](node, *args, *tensors)
        for name, value in env.items():
            results[name].append(value)
    return {name: np.array(values, dtype=np.int64).reshape(batch, *graph.tensors[name].shape)
            for name, values in results.items() if values}
