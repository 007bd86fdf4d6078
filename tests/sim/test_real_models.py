"""Models exported by other tools, compiled and simulated in Verilator, bit-exact against the
reference on every output element: PyTorch CNNs (``torch.onnx``, node names like ``/0/Conv``)
with residual, depthwise (a VVAU), ``torch.mean`` and flatten layers, float (quantized by qfab)
and quantized by onnxruntime, and a Brevitas QONNX network.
"""

import numpy as np
import pytest

from qfab.compiler import reference
from qfab.compiler.compile import compile_graph
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import QuantConfig
from qfab.sim.accelerator import simulate

from ..compiler.test_torch_models import exported, quantized_matches_onnxruntime

pytestmark = [pytest.mark.verilator, pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

IMAGES = 20


def _bit_exact(graph, folder, x):
    build = compile_graph(graph, folder, log=lambda *a: None)
    codes = reference.quantize_inputs(graph, x[:IMAGES])
    res = simulate(build, codes, log=lambda *a: None)
    want = reference.run(graph, codes)[graph.outputs[0]]
    got = res.outputs.reshape(want.shape)
    differ = int((got != want).sum())
    assert differ == 0, f"{differ} of {want.size} elements differ"
    return build


@pytest.mark.parametrize("kind", ["residual", "flatten", "depthwise"])
def test_torch_float_export_compiles_bit_exact(tmp_path, kind):
    path, x_train, x_test = exported(kind, tmp_path)
    graph = load_graph(path, x_train[:256], QuantConfig())
    assert any("/" in n.name for n in graph.nodes), "the exporter's node names were not kept in the IR"
    build = _bit_exact(graph, tmp_path / "build", x_test)
    assert {s.node for s in build.manifest.stages} <= {n.name for n in graph.nodes}


@pytest.mark.parametrize("kind", ["residual", "depthwise"])
def test_torch_onnxruntime_quantized_compiles_bit_exact(tmp_path, kind):
    """QDQ only: the QOperator form imports to the same IR (tests/compiler/test_torch_models.py)."""
    path, _, x_test = exported(kind, tmp_path, "QDQ")
    graph = quantized_matches_onnxruntime(path, x_test[:100])
    if kind == "depthwise":
        assert any(n.kind == "DepthwiseConv2d" for n in graph.nodes)
    _bit_exact(graph, tmp_path / "build", x_test)


@pytest.mark.filterwarnings("ignore")              # Brevitas warns about its own optional kernels on import
def test_brevitas_qonnx_compiles_bit_exact(tmp_path):
    pytest.importorskip("brevitas")
    pytest.importorskip("qonnx")
    from ..compiler.test_qonnx import brevitas_qonnx, matches_qonnx_executor
    path, x = brevitas_qonnx(tmp_path)
    graph = matches_qonnx_executor(path, x)
    _bit_exact(graph, tmp_path / "build", x)
    np.testing.assert_array_equal(sorted({t.qtype.bits for t in graph.tensors.values()}), [4, 8])
