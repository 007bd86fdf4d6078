# amaranth: UnusedElaboratable=no
"""Whole windows and several output pixels per beat (issue 11): the folds a convolution offers,
their cycle counts, manual folding with ``pixels``, and the plan the lowering makes of them."""

import json

import pytest

from qfab.base.errors import QfabError
from qfab.compiler import estimate
from qfab.compiler.compile import compile_graph, load_folding
from qfab.compiler.datasets import digits
from qfab.compiler.folding import Fold, choose_folding, stages_of
from qfab.compiler.load import load_graph
from qfab.compiler.ops.conv2d import wide_in_pixels
from qfab.compiler.plan import Stage
from qfab.compiler.ptq import QuantConfig


def _bundled(name):
    from importlib.resources import files
    return str(files("qfab.compiler") / "data" / name)


@pytest.fixture(scope="module")
def cnn():
    return load_graph(_bundled("digits_cnn.onnx"), digits("NCHW")[0][:300], QuantConfig(w_bits=4, a_bits=4))


def test_a_first_convolution_offers_whole_windows_and_pixels():
    conv = Stage("conv", "mvau", n=8, k=9, vectors=64, simd_of=1, row_pixels=8)
    folds = conv.folds()
    assert Fold(8, 1) in folds and Fold(3, 9) not in folds
    assert [f for f in folds if f.simd == 9] == [Fold(pe, 9) for pe in (1, 2, 4, 8)] + \
        [Fold(8, 9, "bit_parallel", m) for m in (2, 4, 8)]
    # the old floor, KH * KW cycles per output pixel, and below it
    assert conv.cycles(Fold(8, 1)) == 576
    assert conv.cycles(Fold(8, 9)) == 64
    assert conv.cycles(Fold(8, 9, "bit_parallel", 4)) == 16
    assert conv.cycles(Fold(8, 9, "bit_serial", 2)) == 32 * 8
    # a dense layer, or a convolution whose rows are too long, offers none of it
    assert all(f.pixels == 1 for f in Stage("fc", "mvau", n=4, k=6, vectors=1, simd_of=6).folds())
    assert all(f.simd <= 4 for f in Stage("c", "mvau", n=4, k=36, vectors=9, simd_of=4).folds())


def test_copies_and_the_window_cost_luts():
    conv = Stage("conv", "mvau", n=8, k=9, vectors=64, simd_of=1, a_bits=4, row_pixels=8)
    one, two = estimate.cost_luts(conv, Fold(8, 9)), estimate.cost_luts(conv, Fold(8, 9, "bit_parallel", 2))
    engine = estimate.stage_resources(conv, Fold(8, 9)).luts
    assert one > engine                               # the WideWindow
    assert two - one > engine * 0.9                   # a second copy of the engine


def test_input_pixels_keep_up_with_the_windows(cnn):
    tin, tout = cnn.tensors[cnn.nodes[0].input], cnn.tensors[cnn.nodes[0].output]
    assert tin.shape == (8, 8, 1) and tout.shape == (8, 8, 8)
    assert [wide_in_pixels(tin, tout, m) for m in (1, 2, 4, 8)] == [1, 2, 4, 8]


def test_the_interval_floor_moves_to_the_pool(cnn, tmp_path):
    stages = stages_of(cnn)
    folds = choose_folding(stages, target_ii=64, cost=estimate.cost_luts)
    assert folds["conv_3"].simd == 9 and folds["conv_3"].pe == 8
    assert max(s.cycles(folds[s.name]) for s in stages) <= 64
    # the 2x2 max pool over 8 channels of 16 windows (one position per cycle) is the floor now
    with pytest.raises(QfabError, match=r"cannot be met: layer 'maxpool_10' needs at least 64 cycles"):
        choose_folding(stages, target_ii=63, cost=estimate.cost_luts)


def test_manual_pixels(cnn, tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"conv_3": {"pe": 8, "simd": 9, "pixels": 4}}))
    folds = load_folding(path)
    assert folds == {"conv_3": Fold(8, 9, "bit_parallel", 4)}
    manifest = compile_graph(cnn, tmp_path / "b", folding=folds, log=lambda *a: None).manifest
    stage = manifest.stage("conv_3")
    assert (stage.pe, stage.simd, stage.pixels, stage.cycles) == (8, 9, 4, 16)
    window = manifest.stage("conv_3_window")
    assert window.kind == "window"
    assert manifest.input.per_beat == 4          # four input pixels per beat feed four windows per beat
    for bad, phrase in (({"pe": 4, "simd": 9, "pixels": 2}, "pixels=2 needs PE=8, SIMD=9"),
                        ({"pe": 8, "simd": 9, "pixels": 3}, "pixels dividing the output row's 8"),
                        ({"pe": 8, "simd": 3}, r"SIMD=3 must divide 1 \(or SIMD=9, whole windows\)")):
        path.write_text(json.dumps({"conv_3": bad}))
        with pytest.raises(QfabError, match=phrase):
            compile_graph(cnn, tmp_path / "c", folding=load_folding(path), log=lambda *a: None)
    path.write_text(json.dumps({"gemm_24": {"pe": 1, "simd": 1, "pixels": 2}}))
    with pytest.raises(QfabError, match="pixels=2 needs a convolution"):
        compile_graph(cnn, tmp_path / "d", folding=load_folding(path), log=lambda *a: None)
    path.write_text(json.dumps({"conv_3": {"pixels": 0}}))
    with pytest.raises(QfabError, match="pixels of 'conv_3' must be a positive integer"):
        load_folding(path)


def test_wide_trees_on_the_ecp5_get_more_register_levels(cnn):
    from qfab.compiler.lowering import plan_graph
    from qfab.compiler.ops.matrix import product_tiles, tree_registers
    assert [tree_registers("ecp5", s) for s in (1, 16, 17, 64, 65, 256, 257)] == [1, 1, 2, 2, 3, 3, 4]
    assert [tree_registers("ice40", s) for s in (32, 33, 128, 129)] == [1, 2, 2, 3]
    assert [tree_registers("ice40", s, True) for s in (8, 9, 32, 33)] == [1, 2, 2, 3]
    assert [tree_registers("ecp5", s, True) for s in (4, 5, 16, 17)] == [1, 2, 2, 3]
    # 8-bit products: 16 tiles a lane (4 at w4a4, 1 at w2a2, counted as 4)
    assert [product_tiles(w, a) for w, a in ((4, 4), (8, 8), (2, 2), (1, 8), (5, 3))] == [4, 16, 1, 4, 6]
    assert [tree_registers("ecp5", s, True, 16) for s in (1, 4, 16, 17)] == [1, 2, 3, 4]
    assert tree_registers("ecp5", 5, True, 1) == tree_registers("ecp5", 5, True) == 2
    assert [tree_registers("ice40", s, True, 16) for s in (1, 2, 8, 9)] == [1, 2, 2, 3]
    assert tree_registers("ice40", 8, True, 4) == 1 and tree_registers("ice40", 32, False, 16) == 1
    stages = stages_of(cnn)
    folds = choose_folding(stages, target_ii=64, cost=estimate.cost_luts)
    works = stages_by_name = {s.name: s for s in stages}
    for family in ("ecp5", "ice40"):
        plan = plan_graph(cnn, folds, works, family=family)
        mvaus = {s.name: s.params for s in plan.stages if s.engine == "MVAU"}
        for name, params in mvaus.items():
            varying = stages_by_name[name].points * (stages_by_name[name].n // folds[name].pe) * \
                (stages_by_name[name].k // folds[name].simd) > 1
            want = tree_registers(family, folds[name].simd, varying, 4)    # the digits CNN is w4a4
            assert params.get("tree_registers", 1) == want, (family, name)
            # the reserved queue and the fetch register (weights read per fold step): on the ECP5
            assert params.get("reserve", False) == (family == "ecp5"), (family, name)
            assert not params.get("skid", False), (family, name)
            assert params.get("fetch_register", False) == (family == "ecp5" and varying), (family, name)
        if family == "ecp5":      # the digits CNN unfolded: conv_13 sums 72 lanes
            assert max(p.get("tree_registers", 1) for p in mvaus.values()) >= 3


def test_8_bit_products_read_per_fold_get_a_second_tree_register_on_the_ice40():
    """The digits CNN at w8a8 folded to II 2304 (SIMD 2 or more where weights vary per fold step):
    those MVAUs sum 16-tile products, so their trees take two register levels on the iCE40 (and
    the plan's latency counts them: `mac_engine_latency` reads the same parameter)."""
    from qfab.compiler.lowering import plan_graph
    from qfab.compiler.ops.matrix import mac_engine_latency
    cnn8 = load_graph(_bundled("digits_cnn.onnx"), digits("NCHW")[0][:100], QuantConfig(w_bits=8, a_bits=8))
    stages = stages_of(cnn8)
    folds = choose_folding(stages, target_ii=2304, cost=estimate.cost_luts)
    plan = plan_graph(cnn8, folds, {s.name: s for s in stages}, family="ice40")
    mvaus = [s for s in plan.stages if s.engine == "MVAU" and s.params["simd"] > 1]
    assert mvaus and all(s.params.get("tree_registers", 1) == 2 for s in mvaus)
    one = dict(mvaus[0].params, tree_registers=1)
    assert mac_engine_latency(mvaus[0].params, 3) == mac_engine_latency(one, 3) + 1
