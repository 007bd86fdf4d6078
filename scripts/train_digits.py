"""Train the bundled float digits models (MLP and CNN) and write them as ONNX.

Needs the [train] extra (PyTorch CPU). The results are committed under compiler/data/, so users
never run this; it is here so that the models can be reproduced:

    python scripts/train_digits.py
"""

import pathlib

import numpy as np
import torch
from torch import nn

from qfab.compiler.datasets import digits
from qfab.compiler.frontends.onnx_write import float_model, save

OUT = pathlib.Path(__file__).resolve().parent.parent / "compiler" / "data"


def train(model, x, y, epochs=80, lr=3e-3, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    return model


def accuracy(model, x, y):
    with torch.no_grad():
        return float((model(torch.tensor(x)).argmax(1).numpy() == y).mean())


def np_(t):
    return t.detach().numpy().astype(np.float32)


def mlp():
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digits("flat")
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    train(net, x_train, y_train)
    layers = [("gemm", np_(net[0].weight), np_(net[0].bias)), ("relu",),
              ("gemm", np_(net[2].weight), np_(net[2].bias)), ("relu",),
              ("gemm", np_(net[4].weight), np_(net[4].bias))]
    return float_model(layers, (64,)), accuracy(net, x_test, y_test)


def cnn():
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digits("NCHW")
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 10))
    train(net, x_train, y_train)

    def bn(m):
        return ("bn", np_(m.weight), np_(m.bias), np_(m.running_mean), np_(m.running_var))

    layers = [("conv", np_(net[0].weight), np_(net[0].bias), 1, 1, 1), bn(net[1]), ("relu",), ("maxpool", 2, 2),
              ("conv", np_(net[4].weight), np_(net[4].bias), 1, 1, 1), bn(net[5]), ("relu",), ("maxpool", 2, 2),
              ("flatten",), ("gemm", np_(net[9].weight), np_(net[9].bias))]
    return float_model(layers, (1, 8, 8)), accuracy(net, x_test, y_test)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, make in (("digits_mlp", mlp), ("digits_cnn", cnn)):
        model, acc = make()
        save(model, OUT / f"{name}.onnx")
        print(f"{name}: test accuracy {acc:.4f} (torch) -> {OUT / (name + '.onnx')}")
