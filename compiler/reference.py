"""The bit-exact numpy reference: executes a `Graph` exactly as docs/semantics.md says.

Each node kind's kernel is its operator's ``reference`` (`qfab.compiler.ops`), batched and vectorized. Dot products of codes run as float64 matrix
products, which are exact: every product is below 2^16 in magnitude and every fan-in below 2^37,
so all partial sums stay under 2^53. Bias, point multipliers and requantization are int64.

This is the oracle of every hardware test, so it never approximates.
"""

import numpy as np

from qfab.base.errors import QfabError

from . import intops
from .ir import Layout
from .ops import OPS

__all__ = ["run", "run_float", "quantize_inputs", "dequantize_outputs", "CHUNK"]

CHUNK = 512  # images per batch chunk: bounds the memory of im2col


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
        env[node.output] = OPS[node.kind].reference(node, [env[n] for n in node.inputs], *tensors)
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
