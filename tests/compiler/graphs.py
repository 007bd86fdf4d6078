"""Small valid IR graphs for tests: fixed builders and hypothesis strategies.

Every graph built here passes `qfab.compiler.verify.verify`. Builders take explicit parameters;
the strategies (``*_st``) draw them. ``random_codes`` makes a batch of input codes for a graph.

A "drawn node" is a function ``(draw, name, inputs, m_bits) -> (node, output_tensor)`` so that
single nodes and short chains are built the same way.
"""

import numpy as np
from hypothesis import strategies as st

from qfab.compiler import intops
from qfab.compiler.ir import (
    Add,
    AvgPool,
    Conv2d,
    Dense,
    GlobalAvgPool,
    Graph,
    MaxPool,
    QType,
    Requant,
    Requantize,
    Reshape,
    Tensor,
    WeightType,
)
from qfab.compiler.verify import BIAS_BITS, MULTIPLIER_BITS, conv_output_hw, verify

__all__ = [
    "qtype", "weight_type", "requant", "graph", "dense_graph", "conv_graph", "maxpool_graph",
    "avgpool_graph", "gap_graph", "add_graph", "reshape_graph", "requantize_graph", "every_kind_graphs",
    "random_codes",
    "act_type_st", "graph_st", "chain_st", "DRAWN_NODES",
]


# ---- fixed builders -------------------------------------------------------------------------

def qtype(bits=8, signed=False, zero_point=None, scale=0.05):
    if zero_point is None:
        zero_point = 0 if signed else 1 << (bits - 1)
    return QType(bits=bits, signed=signed, scale=float(scale), zero_point=int(zero_point))


def weight_type(channels, bits=8, signed=True, bipolar=False):
    return WeightType(bits=bits, signed=signed, bipolar=bipolar,
                      scales=np.linspace(0.01, 0.02, channels))


def requant(channels, out, m0=1 << 20, shift=30, lo=None, hi=None):
    q = out if isinstance(out, QType) else out.qtype
    return Requant(m0=np.full(channels, m0, dtype=np.int64), shift=np.full(channels, shift, dtype=np.int64),
                   lo=q.qmin if lo is None else lo, hi=q.qmax if hi is None else hi)


def graph(inputs, nodes, tensors, outputs=None, m_bits=24, metadata=None):
    """A verified graph; ``tensors`` is a list of `Tensor`."""
    g = Graph(tensors={t.name: t for t in tensors}, nodes=tuple(nodes), inputs=tuple(inputs),
              outputs=tuple(outputs if outputs is not None else (nodes[-1].output,)),
              m_bits=m_bits, metadata=dict(metadata or {}))
    return verify(g)


def _weights(rng, shape, wt):
    if wt.bipolar:
        return rng.choice(np.array([-1, 1]), size=shape).astype(np.int64)
    return rng.integers(wt.qmin, wt.qmax + 1, size=shape, dtype=np.int64)


def dense_graph(k=12, n=5, points=1, seed=0, name="fc"):
    rng = np.random.default_rng(seed)
    x = Tensor("x", (k,), qtype(8, False))
    y = Tensor("y", (n,), qtype(8, True))
    wt = weight_type(n)
    node = Dense(name, "x", "y", weights=_weights(rng, (points, n, k), wt),
                 multipliers=rng.integers(-3, 4, size=(points, n)).astype(np.int64),
                 bias=rng.integers(-1000, 1000, size=n).astype(np.int64), w_type=wt,
                 requant=requant(n, y, m0=1 << 20, shift=30))
    return graph(["x"], [node], [x, y])


def conv_graph(h=5, w=6, cin=4, cout=4, kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1),
               groups=1, seed=0, name="conv", bipolar=False):
    rng = np.random.default_rng(seed)
    x = Tensor("x", (h, w, cin), qtype(8, False, 3))
    ho, wo = conv_output_hw((h, w), kernel, stride, padding)
    y = Tensor("y", (ho, wo, cout), qtype(8, False, 0))
    wt = weight_type(cout, bits=1 if bipolar else 4, signed=not bipolar, bipolar=bipolar)
    node = Conv2d(name, "x", "y", weights=_weights(rng, (1, cout, *kernel, cin // groups), wt),
                  multipliers=np.ones((1, cout), dtype=np.int64),
                  bias=rng.integers(-100, 100, size=cout).astype(np.int64), w_type=wt,
                  requant=requant(cout, y, m0=3 << 20, shift=26, lo=0, hi=200),
                  stride=stride, padding=padding, groups=groups)
    return graph(["x"], [node], [x, y])


def maxpool_graph(name="pool", lo=None, hi=None):
    t = qtype(4, True, -2)
    x, y = Tensor("x", (5, 5, 3), t), Tensor("y", (3, 3, 3), t)
    return graph(["x"], [MaxPool(name, "x", "y", (2, 2), (2, 2), (1, 1, 0, 0), lo, hi)], [x, y])


def avgpool_graph(name="avg"):
    x = Tensor("x", (4, 4, 2), qtype(8, False, 10))
    y = Tensor("y", (2, 2, 2), qtype(8, False, 5))
    node = AvgPool(name, "x", "y", (3, 3), (2, 2), requant(1, y, m0=7281, shift=16), (1, 1, 0, 0))
    return graph(["x"], [node], [x, y])


def gap_graph(name="gap"):
    x = Tensor("x", (3, 4, 5), qtype(8, True, -3))
    y = Tensor("y", (1, 1, 5), qtype(8, True, 1))
    return graph(["x"], [GlobalAvgPool(name, "x", "y", requant(1, y, m0=5461, shift=16))], [x, y])


def add_graph(name="add"):
    a = Tensor("a", (2, 3, 4), qtype(8, False, 100, 0.1))
    b = Tensor("b", (2, 3, 4), qtype(8, False, 30, 0.2))
    y = Tensor("y", (2, 3, 4), qtype(8, False, 7, 0.25))
    node = Add(name, "a", "b", "y", m_a=6710886, m_b=13421773, shift=24, lo=7, hi=255)
    return graph(["a", "b"], [node], [a, b, y])


def reshape_graph(name="flat"):
    t = qtype(3, True, 1)
    x, y = Tensor("x", (2, 3, 2), t), Tensor("y", (12,), t)
    return graph(["x"], [Reshape(name, "x", "y")], [x, y])


def requantize_graph(name="rq", shape=(2, 3, 4)):
    x = Tensor("x", shape, qtype(8, False, 100, 0.1))
    y = Tensor("y", shape, qtype(4, True, -1, 0.3))
    return graph(["x"], [Requantize(name, "x", "y", requant(1, y, m0=11184811, shift=25, lo=-8, hi=6))], [x, y])


def every_kind_graphs():
    """One small valid graph per node kind (and a multipoint and a bipolar one), by label."""
    return {
        "dense": dense_graph(), "dense_multipoint": dense_graph(points=3),
        "conv": conv_graph(), "conv_depthwise": conv_graph(cin=3, cout=3, groups=3, stride=(2, 1)),
        "conv_bipolar": conv_graph(bipolar=True, padding=(0, 1, 2, 0)),
        "maxpool": maxpool_graph(), "maxpool_clamped": maxpool_graph(lo=-1, hi=5),
        "avgpool": avgpool_graph(), "gap": gap_graph(), "add": add_graph(),
        "reshape": reshape_graph(), "requantize": requantize_graph(),
    }


def random_codes(graph_, batch, seed=0):
    """A batch of random codes for every graph input (a dict), extremes included."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in graph_.inputs:
        t = graph_.tensors[name]
        q = t.qtype
        x = rng.integers(q.qmin, q.qmax + 1, size=(batch, *t.shape), dtype=np.int64)
        if batch >= 3:
            x[0] = q.qmin
            x[1] = q.qmax
        out[name] = x
    return out


# ---- hypothesis strategies ------------------------------------------------------------------

@st.composite
def act_type_st(draw, bits=None):
    bits = draw(st.integers(1, 8)) if bits is None else bits
    signed = draw(st.booleans())
    lo, hi = intops.qrange(bits, signed)
    return QType(bits=bits, signed=signed, scale=draw(st.sampled_from([0.01, 0.1, 0.5])),
                 zero_point=draw(st.integers(lo, hi)))


@st.composite
def _weight_type_st(draw, channels):
    if draw(st.integers(0, 4)) == 4:
        return weight_type(channels, bits=1, signed=True, bipolar=True)
    return weight_type(channels, bits=draw(st.integers(1, 8)), signed=draw(st.booleans()))


def _x_max(q):
    return max(abs(q.qmin - q.zero_point), abs(q.qmax - q.zero_point))


def _clamp(draw, q):
    """The full range half of the time; otherwise mostly a wide clamp, rarely any (even lo == hi)."""
    choice = draw(st.integers(0, 7))       # (hypothesis favours the ends of a range: keep them plain)
    if choice not in (3, 4, 5):
        return q.qmin, q.qmax
    if choice == 4:
        lo = draw(st.integers(q.qmin, q.qmax))
        return lo, draw(st.integers(lo, q.qmax))
    third = (q.qmax - q.qmin) // 3
    return draw(st.integers(q.qmin, q.qmin + third)), draw(st.integers(q.qmax - third, q.qmax))


def _spread(q, count):
    """Typical ``|sum of count (x - zx)|`` for uniform codes x: mean plus two deviations."""
    mean = (q.qmin + q.qmax) / 2 - q.zero_point
    sd = (q.qmax - q.qmin + 1) / 12 ** 0.5
    return abs(count * mean) + 2 * sd * count ** 0.5


def _shifts(draw, rng, typical, m0, bits):
    """Per-channel shifts that map ``typical * m0`` onto about ``bits`` bits; now and then any
    shift in 0..40 (mostly saturating outputs)."""
    if draw(st.integers(0, 7)) == 4:
        return np.full(len(m0), draw(st.integers(0, 40)), dtype=np.int64)
    delta = draw(st.integers(-2, 2))
    ideal = [max(1, int(t) * max(1, int(m))).bit_length() - bits for t, m in zip(typical, m0)]
    jitter = rng.integers(-1, 2, size=len(m0)) if draw(st.booleans()) else 0
    return np.clip(np.array(ideal) + delta + jitter, 0, intops.MAX_SHIFT).astype(np.int64)


def _requant_st(draw, rng, channels, m_bits, typical, out, per_channel=True):
    """Random M0 (mostly in the top quarter of m_bits, now and then 0 or the maximum), shifts
    fitted to ``typical`` (one accumulator magnitude per channel) and a random clamp."""
    if per_channel and draw(st.booleans()):
        m0 = rng.integers(1 << (m_bits - 2), 1 << m_bits, size=channels, dtype=np.int64)
    else:
        m0 = np.full(channels, draw(st.integers(1 << (m_bits - 2), (1 << m_bits) - 1)), dtype=np.int64)
    special = draw(st.integers(0, 7))
    if special in (3, 4):               # the extremes M0 = 0 (output always zp) and 2^m_bits - 1
        m0[0] = 0 if special == 3 else (1 << m_bits) - 1
    typical = np.broadcast_to(np.asarray(typical), (channels,))
    shift = _shifts(draw, rng, typical, m0, out.bits)
    if not per_channel:
        shift = shift[:1].repeat(channels)
    lo, hi = _clamp(draw, out)
    return Requant(m0=m0, shift=shift, lo=lo, hi=hi)


def _mat_constants(draw, rng, wt, weights, xq, m_bits):
    """Multipliers and bias that keep the accumulator times M0 within 62 bits, and the typical
    accumulator magnitude of each channel (for choosing shifts)."""
    points, channels = weights.shape[:2]
    rows = weights.reshape(points, channels, -1)
    fan_in = rows.shape[2]
    product = points * fan_in * wt.max_abs * _x_max(xq)
    limit = (1 << (61 - m_bits)) - 1                     # acc_bits(bound) + m_bits <= 62
    if points == 1 and draw(st.booleans()):
        mult = np.ones((1, channels), dtype=np.int64)
    else:
        m_lim = min((1 << (MULTIPLIER_BITS - 1)) - 1, (limit // 2) // max(1, product))
        mult = rng.integers(-m_lim, m_lim + 1, size=(points, channels), dtype=np.int64)
        mult[rng.random((points, channels)) < 0.2] = 0
    mean = (xq.qmin + xq.qmax) / 2 - xq.zero_point
    sd = (xq.qmax - xq.qmin + 1) / 12 ** 0.5
    dot_mean = np.einsum("pc,pck->c", mult, rows * mean)
    dot_sd = np.sqrt(np.einsum("pc,pck->c", mult.astype(float) ** 2, rows.astype(float) ** 2)) * sd
    scale = int(np.abs(dot_mean).max() + 2 * dot_sd.max()) + 1
    choice = draw(st.integers(0, 9))           # the full 32-bit bias (outputs ~ constant) rarely
    bias_lim = (1 << (BIAS_BITS - 1)) - 1 if choice == 5 else 0 if choice == 4 else scale
    bias_lim = min(bias_lim, (1 << (BIAS_BITS - 1)) - 1, limit // 2)
    bias = rng.integers(-bias_lim, bias_lim + 1, size=channels, dtype=np.int64)
    typical = np.abs(bias + dot_mean) + 2 * dot_sd
    return mult, bias, typical


@st.composite
def _m_bits_st(draw):
    return draw(st.sampled_from([8, 16, 24]))


def draw_dense(draw, name, inputs, m_bits):
    (x,) = inputs
    (k,) = x.shape
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, points = draw(st.integers(1, 6)), draw(st.integers(1, 3))
    wt = draw(_weight_type_st(n))
    out = Tensor(name + "_y", (n,), draw(act_type_st()))
    weights = _weights(rng, (points, n, k), wt)
    mult, bias, typical = _mat_constants(draw, rng, wt, weights, x.qtype, m_bits)
    rq = _requant_st(draw, rng, n, m_bits, typical, out.qtype)
    node = Dense(name, x.name, out.name, weights=weights,
                 multipliers=mult, bias=bias, w_type=wt, requant=rq)
    return node, out


def _window(draw, h, w, max_kernel=3):
    kernel = (draw(st.integers(1, min(max_kernel, h + 2))), draw(st.integers(1, min(max_kernel, w + 2))))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = [draw(st.integers(0, kernel[i % 2] - 1)) for i in range(4)]
    # the padded input must hold one window
    while h + pad[0] + pad[2] < kernel[0]:
        pad[2] += 1
    while w + pad[1] + pad[3] < kernel[1]:
        pad[3] += 1
    return kernel, stride, tuple(pad)


def draw_conv(draw, name, inputs, m_bits, same=False):
    """A random Conv2d; ``same``: output shape = input shape (odd kernel, stride 1, Cout = Cin)."""
    (x,) = inputs
    h, w, cin = x.shape
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    groups = draw(st.sampled_from([g for g in range(1, cin + 1) if cin % g == 0]))
    cout = cin if same else groups * draw(st.integers(1, max(1, 6 // groups)))
    points = draw(st.integers(1, 3))
    if same:
        k = draw(st.sampled_from([1, 3]))
        kernel, stride, padding = (k, k), (1, 1), (k // 2,) * 4
    else:
        kernel, stride, padding = _window(draw, h, w)
    ho, wo = conv_output_hw((h, w), kernel, stride, padding)
    wt = draw(_weight_type_st(cout))
    out = Tensor(name + "_y", (ho, wo, cout), draw(act_type_st()))
    weights = _weights(rng, (points, cout, *kernel, cin // groups), wt)
    mult, bias, typical = _mat_constants(draw, rng, wt, weights, x.qtype, m_bits)
    rq = _requant_st(draw, rng, cout, m_bits, typical, out.qtype)
    node = Conv2d(name, x.name, out.name, weights=weights,
                  multipliers=mult, bias=bias, w_type=wt, requant=rq, stride=stride, padding=padding,
                  groups=groups)
    return node, out


def draw_maxpool(draw, name, inputs, m_bits):
    (x,) = inputs
    h, w, c = x.shape
    kernel, stride, padding = _window(draw, h, w)
    ho, wo = conv_output_hw((h, w), kernel, stride, padding)
    out = Tensor(name + "_y", (ho, wo, c), x.qtype)
    lo, hi = (None, None) if draw(st.booleans()) else _clamp(draw, x.qtype)
    return MaxPool(name, x.name, out.name, kernel, stride, padding, lo, hi), out


def draw_avgpool(draw, name, inputs, m_bits):
    (x,) = inputs
    h, w, c = x.shape
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kernel, stride, padding = _window(draw, h, w)
    ho, wo = conv_output_hw((h, w), kernel, stride, padding)
    out = Tensor(name + "_y", (ho, wo, c), draw(act_type_st()))
    rq = _requant_st(draw, rng, 1, m_bits, _spread(x.qtype, kernel[0] * kernel[1]), out.qtype,
                     per_channel=False)
    return AvgPool(name, x.name, out.name, kernel, stride, rq, padding), out


def draw_gap(draw, name, inputs, m_bits):
    (x,) = inputs
    h, w, c = x.shape
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    out = Tensor(name + "_y", (1, 1, c), draw(act_type_st()))
    rq = _requant_st(draw, rng, 1, m_bits, _spread(x.qtype, h * w), out.qtype, per_channel=False)
    return GlobalAvgPool(name, x.name, out.name, rq), out


def draw_add(draw, name, inputs, m_bits):
    a, b = inputs
    out = Tensor(name + "_y", a.shape, draw(act_type_st()))
    m_a = draw(st.integers(0, (1 << m_bits) - 1))
    m_b = draw(st.integers(0, (1 << m_bits) - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    typical = [_spread(a.qtype, 1) + _spread(b.qtype, 1)]
    shift = int(_shifts(draw, rng, typical, [max(m_a, m_b)], out.qtype.bits)[0])
    lo, hi = _clamp(draw, out.qtype)
    return Add(name, a.name, b.name, out.name, m_a=m_a, m_b=m_b, shift=shift, lo=lo, hi=hi), out


def draw_reshape(draw, name, inputs, m_bits, flat=False):
    (x,) = inputs
    size = x.size
    d = draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
    shape = (size,) if flat else draw(st.sampled_from([(size,), (d, size // d), (1, size, 1)]))
    out = Tensor(name + "_y", shape, x.qtype)
    return Reshape(name, x.name, out.name), out


def draw_requantize(draw, name, inputs, m_bits):
    (x,) = inputs
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    out = Tensor(name + "_y", x.shape, draw(act_type_st()))
    rq = _requant_st(draw, rng, 1, m_bits, _spread(x.qtype, 1), out.qtype, per_channel=False)
    return Requantize(name, x.name, out.name, rq), out


DRAWN_NODES = {
    "Dense": draw_dense, "Conv2d": draw_conv, "MaxPool": draw_maxpool, "AvgPool": draw_avgpool,
    "GlobalAvgPool": draw_gap, "Add": draw_add, "Reshape": draw_reshape, "Requantize": draw_requantize,
}


@st.composite
def _input_tensor_st(draw, kind, name="x"):
    q = draw(act_type_st())
    if kind == "Dense":
        return Tensor(name, (draw(st.integers(1, 24)),), q)
    if kind == "Reshape" and draw(st.booleans()):
        return Tensor(name, (draw(st.integers(1, 12)), draw(st.integers(1, 4))), q)
    return Tensor(name, (draw(st.integers(1, 7)), draw(st.integers(1, 7)), draw(st.integers(1, 6))), q)


@st.composite
def graph_st(draw, kind):
    """A verified one-node graph of ``kind`` with random shapes, types and constants."""
    m_bits = draw(_m_bits_st())
    x = draw(_input_tensor_st(kind))
    inputs = [x]
    if kind == "Add":
        inputs.append(Tensor("x2", x.shape, draw(act_type_st())))
    node, out = DRAWN_NODES[kind](draw, "n0", inputs, m_bits)
    return graph([t.name for t in inputs], [node], [*inputs, out], m_bits=m_bits)


CHAINS = (
    ("Conv2d", "MaxPool", "Reshape"),
    ("Conv2d", "Reshape", "Dense"),
    ("AvgPool", "Conv2d"),
    ("Conv2d", "GlobalAvgPool", "Reshape"),
    ("MaxPool", "Conv2d", "Add"),
    ("Reshape", "Dense", "Dense"),
    ("Conv2d", "Requantize", "Reshape", "Dense"),
)


@st.composite
def chain_st(draw):
    """A verified graph of 2-3 nodes in a row (an ``Add`` adds the chain's output to its input)."""
    kinds = draw(st.sampled_from(CHAINS))
    m_bits = draw(_m_bits_st())
    x = draw(_input_tensor_st(kinds[0]))
    tensors, nodes, cur = [x], [], x
    for i, kind in enumerate(kinds):
        name = f"n{i}"
        if kind == "Add":
            node, out = draw_add(draw, name, [cur, x], m_bits)
        elif kind == "MaxPool" and kinds[-1] == "Add":
            node = MaxPool(name, cur.name, name + "_y", (3, 3), (1, 1), (1, 1, 1, 1))
            out = Tensor(name + "_y", cur.shape, cur.qtype)
        elif kind == "Conv2d" and kinds[-1] == "Add":
            node, out = draw_conv(draw, name, [cur], m_bits, same=True)
        elif kind == "Reshape":
            node, out = draw_reshape(draw, name, [cur], m_bits, flat=True)
        else:
            node, out = DRAWN_NODES[kind](draw, name, [cur], m_bits)
        nodes.append(node)
        tensors.append(out)
        cur = out
    return graph(["x"], nodes, tensors, m_bits=m_bits)

