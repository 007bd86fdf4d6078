"""Quantization-aware training (the [train] extra): learned steps, the learnable MSQE
coefficient, pruning, and export of the trained network to the IR and to QDQ ONNX."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the [train] extra: pip install -e '.[train]'")

from qfab.base.errors import QfabError  # noqa: E402
from qfab.compiler import reference  # noqa: E402
from qfab.compiler.ptq import QuantConfig, quantize  # noqa: E402
from qfab.compiler.train import (  # noqa: E402
    LearnableCoefficient,
    LsqQuantizer,
    QatNet,
    TrainConfig,
    digits_model,
    msqe,
    partial_l2,
    train_qat,
)

from .test_qdq_export import assert_qdq_roundtrip  # noqa: E402


def test_lsq_quantizer_codes_and_straight_through_gradient():
    q = LsqQuantizer(4, False, 0.5)
    x = torch.tensor([-1.0, 0.2, 0.26, 1.25, 3.0, 100.0], requires_grad=True)
    y = q(x)
    np.testing.assert_allclose(y.detach().numpy(), [0.0, 0.0, 0.5, 1.0, 3.0, 7.5])   # 1.25/0.5 = 2.5 -> 2 (even)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 1, 1, 1, 1, 0])              # clamped: no gradient
    assert q.step.grad is not None and q.step.grad.item() != 0
    w = LsqQuantizer(2, True, [0.1, 1.0])
    codes = w.codes(torch.tensor([[0.3, -0.3], [0.3, -5.0]]))
    np.testing.assert_array_equal(codes.detach().numpy(), [[1, -2], [0, -2]])
    with pytest.raises(ValueError, match="bits must be an integer from 1 to 8"):
        LsqQuantizer(9, True, 1.0)


def test_msqe_pulls_weights_to_the_grid():
    q = LsqQuantizer(4, True, 0.1)
    w = torch.tensor([[0.12, -0.26, 0.3]], requires_grad=True)
    r = msqe([w], [q])
    assert r.item() == pytest.approx(((0.02) ** 2 + 0.04 ** 2 + 0.0) / 3, rel=1e-4)
    r.backward()
    stepped = (w - 0.1 * w.grad).detach()
    assert abs(stepped[0, 0] - 0.1) < 0.02 and abs(stepped[0, 1] + 0.3) < 0.04    # toward 0.1 and -0.3
    assert w.grad[0, 2].item() == pytest.approx(0.0, abs=1e-7)


def test_learnable_coefficient_settles_at_lambda_over_r():
    coef = LearnableCoefficient(0.01, init=1.0)
    opt = torch.optim.Adam(coef.parameters(), lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        coef(torch.tensor(0.002)).backward()
        opt.step()
    assert coef.alpha == pytest.approx(0.01 / 0.002, rel=0.05)
    with pytest.raises(ValueError, match="lambda must be positive"):
        LearnableCoefficient(0.0)


def test_partial_l2_only_counts_small_weights():
    w = torch.tensor([0.1, -0.2, 0.5, -1.0])
    assert partial_l2([w], [0.2]).item() == pytest.approx((0.01 + 0.04) / 4)


def test_config_and_bits_errors():
    with pytest.raises(QfabError, match="sparsity must be in"):
        TrainConfig(sparsity=1.0)
    with pytest.raises(QfabError, match="epochs must be a positive integer"):
        TrainConfig(epochs=0)
    fg, (x_train, *_) = digits_model("mlp")
    with pytest.raises(QfabError, match="w_bits must be an integer from 2 to 8"):
        QatNet(fg, 1, 4, x_train[:64])
    with pytest.raises(QfabError, match="model must be one of"):
        train_qat("resnet")


def _agreement(net, graph, x):
    torch_pred = net.predict(x).argmax(-1)
    int_pred = reference.run_float(graph, x).argmax(-1)
    return float((torch_pred == int_pred).mean())


@pytest.fixture(scope="module")
def mlp_w4a4():
    return train_qat("mlp", 4, 4, epochs=10, return_net=True)


def test_mlp_w4a4_exports_an_agreeing_integer_model(mlp_w4a4):
    graph, report, net = mlp_w4a4
    _, _, x_test, y_test = digits_model("mlp")[1]
    agreement = _agreement(net, graph, x_test)
    print(f"mlp w4a4: integer {report['accuracy']:.4f}, torch {report['torch_accuracy']:.4f}, "
          f"argmax agreement {agreement:.4f}")
    assert agreement >= 0.99
    assert report["agreement"] == pytest.approx(agreement)
    assert report["accuracy"] >= 0.96
    assert graph.metadata["source"] == "qat"
    assert all(n.w_type.bits == 4 for n in graph.nodes)
    assert all(t.qtype.bits == 4 and not t.qtype.signed for name, t in graph.tensors.items()
               if name not in graph.outputs)
    for node, step in zip(graph.nodes, net.weight_quantizers()):
        np.testing.assert_array_equal(node.w_type.scales, step.exact_step())   # learned steps are the scales
    assert report["compression"]["total"]["ratio"] > 8.0


def test_cnn_w2a2_training_beats_ptq(tmp_path):
    graph, report, net = train_qat("cnn", 2, 2, epochs=15, return_net=True)
    fg, (x_train, _, x_test, y_test) = digits_model("cnn")
    ptq = quantize(fg, x_train.transpose(0, 2, 3, 1), QuantConfig(w_bits=2, a_bits=2, calib_method="mse"))
    ptq_acc = float((reference.run_float(ptq, x_test).argmax(-1) == y_test).mean())
    agreement = _agreement(net, graph, x_test)
    print(f"cnn w2a2: trained {report['accuracy']:.4f} vs PTQ {ptq_acc:.4f}, agreement {agreement:.4f}")
    assert agreement >= 0.99
    assert report["accuracy"] >= ptq_acc + 0.1
    assert report["accuracy"] >= 0.85
    assert_qdq_roundtrip(graph, x_test, tmp_path / "cnn_w2a2_qat.onnx")


def test_pruned_weights_stay_exactly_zero(tmp_path):
    graph, report, net = train_qat("mlp", 4, 4, sparsity=0.75, epochs=10, return_net=True)
    _, (_, _, x_test, _) = digits_model("mlp")
    print(f"mlp w4a4 75% pruned: {report['accuracy']:.4f}, sparsity {report['weight_sparsity']:.3f}")
    for node, layer in zip(graph.nodes, net.layers):
        mask = net.mask(layer).numpy()
        assert mask.size - mask.sum() == round(0.75 * mask.size)                # exact per-layer count
        assert np.all(node.weights[0][mask == 0] == 0), node.name
        assert report["layer_sparsity"][node.name] >= 0.75
    assert report["pruned"] == sum(round(0.75 * n.weights.size) for n in graph.nodes)
    assert report["accuracy"] >= 0.93
    assert _agreement(net, graph, x_test) >= 0.99
    back = assert_qdq_roundtrip(graph, x_test, tmp_path / "mlp_pruned.onnx")
    for node, again in zip(graph.nodes, back.nodes):
        np.testing.assert_array_equal(node.weights == 0, again.weights == 0)
    assert report["compression"]["total"]["ratio"] > report["compression"]["total"]["fixed_ratio"]
