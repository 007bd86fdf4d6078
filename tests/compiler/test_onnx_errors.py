"""Models qfab cannot take are refused with a message naming the node and the reason."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qfab.base.errors import UnsupportedModelError
from qfab.compiler.frontends.onnx_import import import_onnx
from qfab.compiler.frontends.onnx_write import float_model, save


def _model(nodes, inits, in_shape=("N", 4), out_shape=None, opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def _write(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


W = np.ones((3, 4), np.float32)


def test_unsupported_operator_names_node(tmp_path):
    m = _model([helper.make_node("Gemm", ["input", "W"], ["h"], name="fc", transB=1),
                helper.make_node("Sigmoid", ["h"], ["output"], name="squash")], {"W": W})
    with pytest.raises(UnsupportedModelError, match=r"node 'squash' \(Sigmoid\): operator 'Sigmoid' is not supported"):
        import_onnx(_write(tmp_path, m))


def test_dynamic_feature_dimension(tmp_path):
    m = _model([helper.make_node("Gemm", ["input", "W"], ["output"], name="fc", transB=1)], {"W": W},
               in_shape=("N", "F"))
    with pytest.raises(UnsupportedModelError, match="dynamic dimension 1 \\(F\\)"):
        import_onnx(_write(tmp_path, m))


def test_garbage_file(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(UnsupportedModelError, match="junk.onnx"):
        import_onnx(path)


def test_missing_file(tmp_path):
    with pytest.raises(UnsupportedModelError, match="no such file"):
        import_onnx(tmp_path / "nothing.onnx")


def test_checker_rejects_inconsistent_model(tmp_path):
    m = _model([helper.make_node("Gemm", ["input", "W_missing"], ["output"], name="fc")], {})
    with pytest.raises(UnsupportedModelError, match="fc|W_missing|checker"):
        import_onnx(_write(tmp_path, m))


def test_relu_on_shared_tensor_cannot_fuse(tmp_path):
    m = _model([helper.make_node("Gemm", ["input", "W"], ["h"], name="fc", transB=1),
                helper.make_node("Relu", ["h"], ["r"], name="act"),
                helper.make_node("Add", ["h", "r"], ["output"], name="sum")], {"W": W})
    with pytest.raises(UnsupportedModelError, match=r"node 'act' \(Relu\).*also used elsewhere"):
        import_onnx(_write(tmp_path, m))


def test_dilated_conv(tmp_path):
    w = np.ones((2, 1, 3, 3), np.float32)
    m = _model([helper.make_node("Conv", ["input", "W"], ["output"], name="dil", dilations=[2, 2])], {"W": w},
               in_shape=("N", 1, 8, 8))
    with pytest.raises(UnsupportedModelError, match=r"node 'dil' \(Conv\): dilations \[2, 2\]"):
        import_onnx(_write(tmp_path, m))


def test_avgpool_excluding_padding(tmp_path):
    m = _model([helper.make_node("AveragePool", ["input"], ["output"], name="ap", kernel_shape=[3, 3],
                                 pads=[1, 1, 1, 1])], {}, in_shape=("N", 1, 8, 8))
    with pytest.raises(UnsupportedModelError, match="count_include_pad=1"):
        import_onnx(_write(tmp_path, m))


def test_two_inputs(tmp_path):
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["output"], name="add")], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in "ab"],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedModelError, match="one input, this one has 2"):
        import_onnx(_write(tmp_path, m))


def test_dynamically_quantized_model(tmp_path):
    m = _model([helper.make_node("DynamicQuantizeLinear", ["input"], ["q", "s", "z"], name="dq"),
                helper.make_node("Identity", ["s"], ["output"], name="id")], {})
    with pytest.raises(UnsupportedModelError, match="dynamically quantized models are not supported"):
        import_onnx(_write(tmp_path, m))


def test_final_softmax_is_dropped_with_a_note(tmp_path):
    m = _model([helper.make_node("Gemm", ["input", "W"], ["h"], name="fc", transB=1),
                helper.make_node("Softmax", ["h"], ["output"], name="sm")], {"W": W})
    fg = import_onnx(_write(tmp_path, m))
    assert [n.kind for n in fg.nodes] == ["Dense"]
    assert any("Softmax" in note for note in fg.notes)


def test_batchnorm_folds_exactly(tmp_path):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    bn = [rng.standard_normal(4).astype(np.float32) for _ in range(3)] + [np.abs(rng.standard_normal(4)).astype(np.float32) + 0.5]
    path = tmp_path / "bn.onnx"
    save(float_model([("conv", w, None, 1, 1, 1), ("bn", *bn), ("relu",)], (2, 5, 5)), path)
    fg = import_onnx(path)
    assert [n.kind for n in fg.nodes] == ["Conv2d"] and fg.nodes[0].act.kind == "relu"
    import onnxruntime as ort

    from qfab.compiler.fgraph import forward
    x = rng.standard_normal((3, 2, 5, 5)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = forward(fg, x.transpose(0, 2, 3, 1))[fg.outputs[0]].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
