"""Post-training quantization: float graph + calibration data -> IR graph.

A layer's ``w_bits`` is its weight width and its ``a_bits`` the width of the activations it
*reads* (the MAC operands), so "w4a4" means 4-bit weights times 4-bit inputs. A tensor therefore
takes the ``a_bits`` of the layers that read it (the widest, if several); the graph output takes
``output_bits``. Tensors joined by MaxPool or Reshape share one type.
"""

import json
import pathlib
import tomllib
from dataclasses import dataclass, field, fields

import numpy as np

from qfab.base.errors import QfabError

from .build import activation_type, build_graph, type_preserving
from .calibrate import METHODS, activation_range, bias_scale_floor, check_samples, quantize_weight_rows
from .fgraph import FixedWeights, forward
from .multipoint import im2col, multipoint_rows
from .ops import op_for

__all__ = ["QuantConfig", "LayerConfig", "quantize", "load_config"]


def _check_bits(what, bits):
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise QfabError(f"{what} must be an integer from 1 to 8, not {bits!r}")


@dataclass(frozen=True)
class LayerConfig:
    w_bits: int | None = None
    a_bits: int | None = None


@dataclass(frozen=True)
class QuantConfig:
    """Quantization choices; ``layers`` overrides bits per layer (by node name)."""
    w_bits: int = 8
    a_bits: int = 8
    output_bits: int = 8
    calib_method: str = "minmax"
    percentile: float = 99.99
    activations: str = "asymmetric"      # or "signed" (symmetric, zero point 0)
    per_channel: bool = True
    m_bits: int = 24
    multipoint: float = 0.0              # extra weight points, as a fraction of each layer's channels
    max_points: int = 4
    mult_bits: int = 8                   # width of the multipoint integer multipliers
    layers: dict = field(default_factory=dict)

    def __post_init__(self):
        for key in ("w_bits", "a_bits", "output_bits"):
            _check_bits(key, getattr(self, key))
        if self.calib_method not in METHODS:
            raise QfabError(f"calib_method must be one of {', '.join(METHODS)}, not {self.calib_method!r}")
        if self.activations not in ("asymmetric", "signed"):
            raise QfabError(f"activations must be 'asymmetric' or 'signed', not {self.activations!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise QfabError(f"percentile must be in (50, 100], not {self.percentile!r}")
        if not isinstance(self.m_bits, int) or not 8 <= self.m_bits <= 32:
            raise QfabError(f"m_bits must be an integer from 8 to 32, not {self.m_bits!r}")
        if not isinstance(self.max_points, int) or not 1 <= self.max_points <= 8:
            raise QfabError(f"max_points must be an integer from 1 to 8, not {self.max_points!r}")
        if not 0.0 <= float(self.multipoint) <= self.max_points - 1:
            raise QfabError(f"multipoint budget must be from 0 to {self.max_points - 1} (extra points per channel), "
                            f"not {self.multipoint!r}")
        if not isinstance(self.mult_bits, int) or not 2 <= self.mult_bits <= 16:
            raise QfabError(f"mult_bits must be an integer from 2 to 16, not {self.mult_bits!r}")
        for name, layer in self.layers.items():
            for key in ("w_bits", "a_bits"):
                if getattr(layer, key) is not None:
                    _check_bits(f"layers.{name}.{key}", getattr(layer, key))

    def layer(self, name):
        lc = self.layers.get(name, LayerConfig())
        return (lc.w_bits or self.w_bits), (lc.a_bits or self.a_bits)


def load_config(path, **overrides):
    """Read a JSON or TOML config file into a `QuantConfig`; ``overrides`` win (None is ignored)."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
        doc = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as e:
        raise QfabError(f"{path}: cannot read the quantization config ({e})") from None
    if not isinstance(doc, dict):
        raise QfabError(f"{path}: the config must be a table/object")
    known = {f.name for f in fields(QuantConfig)}
    unknown = set(doc) - known
    if unknown:
        raise QfabError(f"{path}: unknown config keys {sorted(unknown)} (known: {sorted(known)})")
    layers = {}
    for name, spec in doc.pop("layers", {}).items():
        if not isinstance(spec, dict) or set(spec) - {"w_bits", "a_bits"}:
            raise QfabError(f"{path}: layers.{name} must hold only w_bits and a_bits")
        layers[name] = LayerConfig(**spec)
    doc.update({k: v for k, v in overrides.items() if v is not None})
    return QuantConfig(**doc, layers=layers)


def _type_classes(fg):
    """Map each tensor to the tensor whose type it shares (through MaxPool / Reshape)."""
    root = {t: t for t in fg.shapes}
    for node in fg.nodes:
        if type_preserving(node.kind):
            root[node.output] = root[node.inputs[0]]
    return root


def _tensor_bits(fg, config, root):
    bits = {}
    for node in fg.nodes:
        for t in node.inputs:
            want = config.layer(node.name)[1] if op_for(node.kind).weighted else config.a_bits
            r = root[t]
            bits[r] = max(bits.get(r, 0), want)
    for t in fg.outputs:
        bits[root[t]] = max(bits.get(root[t], 0), config.output_bits)
    return bits


def _multipoint(node, x, w_bits, config):
    """`FixedWeights` with several points per channel (see `qfab.compiler.multipoint`)."""
    rows = node.weight.reshape(node.weight.shape[0], -1)
    if node.weight.ndim == 4:                  # a convolution: its windows are the inputs of a row
        if node.groups != 1:
            raise QfabError(f"node {node.name!r}: multipoint quantization of grouped convolutions is not supported")
        x = im2col(x, node.weight.shape[1:3], node.stride, node.padding)
    q, mult, scales = multipoint_rows(rows, w_bits, x.reshape(len(x), -1), config.multipoint,
                                      config.max_points, config.mult_bits)
    return FixedWeights(w_int=q.reshape((q.shape[0],) + node.weight.shape), scales=scales, bits=w_bits,
                        signed=True, b_int=None, multipliers=mult)


def _floor_multipoint(node, fixed, floor):
    """Channels whose multipoint scale is below the bias floor (`bias_scale_floor`) become one
    point at the floored scale (their weights are tiny: a dead channel)."""
    low = fixed.scales < floor
    if not np.any(low):
        return fixed
    q, scales = quantize_weight_rows(node.weight[low], fixed.bits, min_scales=floor[low])
    w_int, mult = fixed.w_int.copy(), np.asarray(fixed.multipliers).copy()
    w_int[:, low], mult[:, low] = 0, 0
    w_int[0, low], mult[0, low] = q, 1
    new_scales = np.asarray(fixed.scales, np.float64).copy()
    new_scales[low] = scales
    return fixed.replace(w_int=w_int, multipliers=mult, scales=new_scales)


def quantize(fg, calib, config=QuantConfig(), metadata=None):
    """Quantize float graph ``fg`` using calibration batch ``calib`` (channels-last)."""
    unknown = set(config.layers) - {n.name for n in fg.nodes}
    if unknown:
        raise QfabError(f"config names layers the model does not have: {sorted(unknown)}; "
                        f"its layers are {[n.name for n in fg.nodes]}")
    calib = np.asarray(calib, dtype=np.float64)
    if calib.ndim < 2 or calib.shape[1:] != fg.shapes[fg.inputs[0]] or len(calib) == 0:
        raise QfabError(f"calibration data has shape {calib.shape}; expected (N, "
                        f"{', '.join(map(str, fg.shapes[fg.inputs[0]]))}) with N >= 1")
    check_samples(calib)
    values = forward(fg, calib, keep=tuple(fg.shapes))
    root = _type_classes(fg)
    bits = _tensor_bits(fg, config, root)
    qtypes = {}
    for t in fg.shapes:
        if root[t] != t:
            continue
        b = bits.get(t, config.a_bits)
        lo, hi = activation_range(values[t], config.calib_method, b,
                                  config.activations == "signed", config.percentile)
        qtypes[t] = activation_type(b, lo, hi, signed=config.activations == "signed" and lo < 0)
    weights = {}
    for node in fg.nodes:
        if not op_for(node.kind).weighted:
            continue
        w_bits = config.layer(node.name)[0]
        if config.multipoint > 0:
            weights[node.name] = _multipoint(node, values[node.inputs[0]], w_bits, config)
        floor = bias_scale_floor(node.bias, qtypes[root[node.inputs[0]]].scale)
        if config.multipoint > 0:
            weights[node.name] = _floor_multipoint(node, weights[node.name], floor)
            continue
        w_int, scales = quantize_weight_rows(node.weight, w_bits, config.per_channel, min_scales=floor)
        weights[node.name] = FixedWeights(w_int=w_int, scales=scales, bits=w_bits, signed=True, b_int=None)
    meta = {"source": "ptq", "w_bits": config.w_bits, "a_bits": config.a_bits,
            "calib_method": config.calib_method, "calib_samples": int(len(calib))}
    if config.multipoint > 0:
        meta["multipoint"] = config.multipoint
    meta.update(metadata or {})
    return build_graph(fg, qtypes, weights, config.m_bits, meta)
