"""Quantization-aware training with learnable regularization, pruning, and export to the IR.

The loss of one batch is

    cross_entropy + alpha * MSQE(w) - lambda * log(alpha)
                  [ + beta * L2(w below the sparsity quantile) - mu * log(beta) ]   (before pruning)

with ``alpha`` and ``beta`` learned (`LearnableCoefficient`), the weight and activation steps
learned (`LsqQuantizer`), and rounding straight-through. With a target ``sparsity`` the first
``prune_fraction`` of the epochs shrink the smallest weights with the partial L2 term; then
exactly that fraction of each layer's weights (the smallest magnitudes) is pruned to zero, and the rest of the epochs fine-tune with the pruned weights held at zero by a mask.
"""

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qfab.base.errors import QfabError

from .. import reference
from ..entropy import compression_report
from ..fgraph import FGraph, forward
from .net import QatNet
from .quantizers import MIN_STEP, LearnableCoefficient, msqe, partial_l2, prune_threshold

__all__ = ["TrainConfig", "fit", "prune", "train_qat", "digits_model"]

MODELS = {"mlp": ("digits_mlp.onnx", "flat"), "cnn": ("digits_cnn.onnx", "NCHW")}


@dataclass(frozen=True)
class TrainConfig:
    """Training choices. ``msqe_lambda`` / ``prune_lambda`` are the fixed ``lambda`` / ``mu`` of
    the learnable-coefficient terms; ``sparsity`` is the fraction of weights pruned to zero."""
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    step_lr: float = 1e-3
    coefficient_lr: float = 2e-2
    msqe_lambda: float = 1e-3
    prune_lambda: float = 1e-2
    sparsity: float = 0.0
    prune_fraction: float = 0.4
    seed: int = 0
    threads: int = 1          # torch CPU threads while training (the digits nets are tiny)

    def __post_init__(self):
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise QfabError(f"epochs must be a positive integer, not {self.epochs!r}")
        if not 0.0 <= self.sparsity < 1.0:
            raise QfabError(f"sparsity must be in [0, 1), not {self.sparsity!r}")
        if not 0.0 < self.prune_fraction < 1.0:
            raise QfabError(f"prune_fraction must be in (0, 1), not {self.prune_fraction!r}")
        for key in ("lr", "step_lr", "coefficient_lr", "msqe_lambda", "prune_lambda"):
            if not getattr(self, key) > 0:
                raise QfabError(f"{key} must be positive, not {getattr(self, key)!r}")


def prune(net, sparsity):
    """Zero exactly ``round(sparsity * n)`` of the ``n`` weights of each layer (the smallest
    magnitudes) and fix them at zero with the layer's mask. Returns the number pruned."""
    total = 0
    with torch.no_grad():
        for node, w in zip(net.layers, net.weights()):
            mags = w.detach().abs().reshape(-1)
            k = int(round(sparsity * mags.numel()))
            keep = torch.ones_like(mags)
            keep[torch.argsort(mags, stable=True)[:k]] = 0.0
            mask = keep.reshape(w.shape) * net.mask(node)
            net.set_mask(node, mask)
            net.weight[net._key(node.name)].mul_(mask)
            total += k
    return total


def fit(net, x, y, config=TrainConfig()):
    """Train ``net`` (a `QatNet`) on float inputs ``x`` (model layout) and labels ``y``.

    Returns a history dict: per epoch the mean task loss, MSQE, ``alpha`` and (while pruning)
    ``beta``; and ``pruned``, the number of weights fixed at zero.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _fit(net, x, y, config)
    finally:
        torch.set_num_threads(threads)


def _fit(net, x, y, config):
    torch.manual_seed(config.seed)
    xt = torch.as_tensor(np.asarray(x, np.float32))
    yt = torch.as_tensor(np.asarray(y, np.int64))
    steps = [p for name, p in net.named_parameters() if name.endswith(".step")]
    others = [p for name, p in net.named_parameters() if not name.endswith(".step")]
    with torch.no_grad():
        r0 = float(msqe(net.weights(), net.weight_quantizers()))
    alpha = LearnableCoefficient(config.msqe_lambda, init=config.msqe_lambda / max(r0, 1e-12))
    beta = LearnableCoefficient(config.prune_lambda, init=1.0)
    if config.sparsity > 0:
        with torch.no_grad():
            th = prune_threshold(net.weights(), config.sparsity)
            beta = LearnableCoefficient(config.prune_lambda,
                                        init=config.prune_lambda / max(float(partial_l2(net.weights(), th)), 1e-12))
    opt = torch.optim.Adam([{"params": others, "lr": config.lr}, {"params": steps, "lr": config.step_lr},
                            {"params": list(alpha.parameters()) + list(beta.parameters()),
                             "lr": config.coefficient_lr}])
    batches = -(-len(xt) // config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * batches)
    prune_epoch = max(1, round(config.prune_fraction * config.epochs)) if config.sparsity > 0 else None
    history = {"loss": [], "msqe": [], "alpha": [], "beta": [], "pruned": 0}
    net.train()
    for epoch in range(config.epochs):
        if epoch == prune_epoch:
            history["pruned"] = prune(net, config.sparsity)
        perm = torch.randperm(len(xt))
        losses, errors = [], []
        for i in range(0, len(xt), config.batch_size):
            idx = perm[i:i + config.batch_size]
            task = F.cross_entropy(net(xt[idx]), yt[idx])
            weights = net.weights()
            r = msqe(weights, net.weight_quantizers())
            loss = task + alpha(r)
            if prune_epoch is not None and epoch < prune_epoch:
                loss = loss + beta(partial_l2(weights, prune_threshold(weights, config.sparsity)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for p in steps:
                    p.abs_().clamp_(min=MIN_STEP)
            losses.append(float(task.detach()))
            errors.append(float(r.detach()))
        history["loss"].append(float(np.mean(losses)))
        history["msqe"].append(float(np.mean(errors)))
        history["alpha"].append(alpha.alpha)
        history["beta"].append(beta.alpha if prune_epoch is not None and epoch < prune_epoch else None)
    if prune_epoch is not None and history["pruned"] == 0:
        history["pruned"] = prune(net, config.sparsity)      # a one-epoch run still ends pruned
    net.eval()
    return history


def digits_model(model):
    """``(fg, (x_train, y_train, x_test, y_test))`` of a bundled digits model, ``"mlp"`` or ``"cnn"``."""
    from importlib.resources import files

    from ..datasets import digits
    from ..frontends.onnx_import import import_onnx
    if model not in MODELS:
        raise QfabError(f"model must be one of {', '.join(MODELS)}, not {model!r}")
    file, layout = MODELS[model]
    return import_onnx(str(files("qfab.compiler") / "data" / file)), digits(layout)


def _accuracy(pred, y):
    return float((np.asarray(pred).argmax(-1) == y).mean())


def train_qat(model="mlp", w_bits=4, a_bits=4, sparsity=0.0, epochs=30, seed=0, *, data=None,
              output_bits=8, config=None, return_net=False):
    """Quantization-aware training of a digits model (or any supported `FGraph`).

    Parameters
    ----------
    model : "mlp" | "cnn" | FGraph
        A bundled float digits model (its weights are the starting point), or a float graph;
        a float graph needs ``data``.
    w_bits, a_bits : int
        Weight width and the width of the activations layers read (2 to 8).
    sparsity : float
        Fraction of weights pruned to exactly zero (0 for none).
    epochs, seed : int
    data : tuple, optional
        ``(x_train, y_train, x_test, y_test)``, inputs in the model's own layout.
    config : TrainConfig, optional
        Further options; ``epochs``, ``sparsity`` and ``seed`` given here override it.

    Returns
    -------
    (Graph, dict)
        The verified IR graph and a report: accuracies (float, fake-quantized torch, integer
        reference), argmax agreement of torch and integer model, sparsity per layer, the final
        ``alpha`` and MSQE, compression ratios, time.
    """
    if isinstance(model, FGraph):
        if data is None:
            raise QfabError("training a float graph needs data=(x_train, y_train, x_test, y_test)")
        fg, name = model, "graph"
    else:
        fg, default_data = digits_model(model)
        data, name = data or default_data, model
    x_train, y_train, x_test, y_test = data
    base = config or TrainConfig()
    config = TrainConfig(**{**asdict(base), "epochs": epochs, "sparsity": float(sparsity), "seed": seed})
    torch.manual_seed(seed)
    start = time.perf_counter()
    net = QatNet(fg, w_bits, a_bits, x_train, output_bits=output_bits)
    history = fit(net, x_train, y_train, config)
    seconds = time.perf_counter() - start
    graph = net.export({"source": "qat", "w_bits": w_bits, "a_bits": a_bits, "sparsity": float(sparsity),
                        "epochs": epochs, "seed": seed})
    torch_out = net.predict(x_test)
    int_out = reference.run_float(graph, x_test)
    float_out = forward(fg, net.to_ir_layout(np.asarray(x_test, np.float64)))[fg.outputs[0]]
    layers, total = compression_report(graph)
    report = {
        "model": name, "w_bits": w_bits, "a_bits": a_bits, "sparsity_target": float(sparsity),
        "epochs": epochs, "seed": seed, "train_seconds": seconds,
        "float_accuracy": _accuracy(float_out, y_test),
        "torch_accuracy": _accuracy(torch_out, y_test),
        "accuracy": _accuracy(int_out, y_test),
        "agreement": float((torch_out.argmax(-1) == int_out.argmax(-1)).mean()),
        "weight_sparsity": total.sparsity,
        "layer_sparsity": {layer.name: layer.sparsity for layer in layers},
        "pruned": history["pruned"],
        "alpha": history["alpha"][-1], "msqe": history["msqe"][-1], "history": history,
        "compression": {layer.name: {"weights": layer.count, "huffman_bits": layer.huffman_bits,
                                     "entropy": layer.entropy, "ratio": layer.ratio,
                                     "fixed_ratio": layer.fixed_ratio, "sparsity": layer.sparsity}
                        for layer in layers + [total]},
    }
    return (graph, report, net) if return_net else (graph, report)
