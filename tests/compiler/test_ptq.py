"""Post-training quantization of the bundled float digits models: accuracy at 8 and 4 bits,
calibration methods, per-layer bits from a config file."""

import json

import numpy as np
import pytest

from qfab.base.errors import QfabError
from qfab.compiler import reference
from qfab.compiler.datasets import digits
from qfab.compiler.fgraph import forward
from qfab.compiler.frontends.onnx_import import import_onnx
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import LayerConfig, QuantConfig, load_config, quantize


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


MODELS = {"mlp": ("digits_mlp.onnx", "flat"), "cnn": ("digits_cnn.onnx", "NCHW")}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    file, layout = MODELS[request.param]
    fg = import_onnx(_bundled(file))
    x_train, y_train, x_test, y_test = digits(layout)
    to_ir = (lambda x: x.transpose(0, 2, 3, 1)) if layout == "NCHW" else (lambda x: x)
    float_acc = float((forward(fg, to_ir(x_test))[fg.outputs[0]].argmax(-1) == y_test).mean())
    return request.param, fg, to_ir(x_train), x_test, y_test, float_acc


def _accuracy(graph, x_test, y_test):
    return float((reference.run_float(graph, x_test).argmax(-1) == y_test).mean())


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_8bit_within_half_a_point_of_float(model, method):
    name, fg, x_train, x_test, y_test, float_acc = model
    graph = quantize(fg, x_train, QuantConfig(w_bits=8, a_bits=8, calib_method=method))
    acc = _accuracy(graph, x_test, y_test)
    print(f"{name} w8a8 {method}: {acc:.4f} (float {float_acc:.4f})")
    assert float_acc > 0.95
    assert acc >= float_acc - 0.005


@pytest.mark.parametrize("method", ["minmax", "mse"])
def test_4bit_within_three_points_of_float(model, method):
    name, fg, x_train, x_test, y_test, float_acc = model
    graph = quantize(fg, x_train, QuantConfig(w_bits=4, a_bits=4, calib_method=method))
    assert all(t.qtype.bits == 4 for n, t in graph.tensors.items() if n not in graph.outputs)
    assert all(n.w_type.bits == 4 for n in graph.nodes if hasattr(n, "w_type"))
    acc = _accuracy(graph, x_test, y_test)
    print(f"{name} w4a4 {method}: {acc:.4f} (float {float_acc:.4f})")
    assert acc >= float_acc - 0.03


def test_weights_are_per_channel_symmetric(model):
    _, fg, x_train, *_ = model
    graph = quantize(fg, x_train, QuantConfig(w_bits=4, a_bits=8))
    for node in graph.nodes:
        if hasattr(node, "w_type"):
            assert node.w_type.per_channel
            assert node.weights.min() >= -8 and node.weights.max() <= 7


def test_lower_bits_lose_accuracy_monotonically_on_average(model):
    """A sanity check that bits really change the model: 2 bits is worse than 8 bits."""
    _, fg, x_train, x_test, y_test, _ = model
    acc8 = _accuracy(quantize(fg, x_train, QuantConfig(w_bits=8, a_bits=8)), x_test, y_test)
    acc2 = _accuracy(quantize(fg, x_train, QuantConfig(w_bits=2, a_bits=2)), x_test, y_test)
    assert acc2 < acc8


def test_per_layer_bits_from_config_file(tmp_path):
    fg = import_onnx(_bundled("digits_mlp.onnx"))
    first, last = fg.nodes[0].name, fg.nodes[-1].name
    cfg = tmp_path / "q.json"
    cfg.write_text(json.dumps({"w_bits": 4, "a_bits": 4, "calib_method": "mse",
                               "layers": {first: {"w_bits": 8, "a_bits": 8}, last: {"w_bits": 2}}}))
    x_train, _, x_test, y_test = digits("flat")
    graph = load_graph(_bundled("digits_mlp.onnx"), x_train, load_config(cfg))
    by_name = {n.name: n for n in graph.nodes}
    assert by_name[first].w_type.bits == 8
    assert graph.tensors[graph.inputs[0]].qtype.bits == 8           # the first layer reads 8 bits
    assert by_name[last].w_type.bits == 2
    assert graph.tensors[by_name[last].input].qtype.bits == 4
    assert graph.tensors[graph.outputs[0]].qtype.bits == 8           # output_bits default
    toml = tmp_path / "q.toml"
    toml.write_text(f'w_bits = 3\na_bits = 5\n[layers.{first}]\nw_bits = 6\n')
    config = load_config(toml)
    assert config.layer(first) == (6, 5) and config.layer(last) == (3, 5)


@pytest.mark.parametrize("doc,phrase", [
    ({"w_bits": 0}, "w_bits must be an integer from 1 to 8"),
    ({"a_bits": 9}, "a_bits must be an integer from 1 to 8"),
    ({"calib_method": "magic"}, "calib_method must be one of"),
    ({"wbits": 4}, "unknown config keys"),
    ({"layers": {"x": {"w_bits": 12}}}, "layers.x.w_bits"),
])
def test_bad_config_is_named(tmp_path, doc, phrase):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps(doc))
    with pytest.raises(QfabError, match=phrase):
        load_config(cfg)


def test_config_naming_unknown_layer():
    fg = import_onnx(_bundled("digits_mlp.onnx"))
    x_train, *_ = digits("flat")
    with pytest.raises(QfabError, match="layers the model does not have: \\['nope'\\]"):
        quantize(fg, x_train, QuantConfig(layers={"nope": LayerConfig(w_bits=4)}))


def test_calibration_data_of_wrong_shape_is_named():
    x_train, *_ = digits("flat")
    with pytest.raises(QfabError, match=r"float inputs of shape \(N, 1, 8, 8\)"):
        load_graph(_bundled("digits_cnn.onnx"), x_train)


def test_float_model_without_calibration_is_refused():
    with pytest.raises(QfabError, match="give calibration data"):
        load_graph(_bundled("digits_mlp.onnx"))


def test_signed_symmetric_activations():
    fg = import_onnx(_bundled("digits_mlp.onnx"))
    x_train, _, x_test, y_test = digits("flat")
    graph = quantize(fg, x_train, QuantConfig(activations="signed"))
    out = graph.tensors[graph.outputs[0]].qtype
    assert out.signed and out.zero_point == 0      # logits have both signs
    assert _accuracy(graph, x_test, y_test) > 0.95


def test_clip_bound_on_a_code_survives_float32_rounding():
    """A Clip at exactly k * scale, stored as float32, must still allow code k."""
    from qfab.compiler.build import clamp_bounds
    from qfab.compiler.fgraph import Act
    from qfab.compiler.ir import QType
    for k, scale in ((15, 0.1), (255, 6 / 255), (7, 0.3)):
        s = float(np.float32(scale))
        q = QType(8, False, s, 0)
        assert clamp_bounds(Act("clip", 0.0, float(np.float32(k * s))), q) == (0, min(k, 255))
        assert clamp_bounds(Act("relu"), QType(8, True, s, -3)) == (-3, 127)
