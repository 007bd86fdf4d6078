"""Board budgets: the device less the board top, counted in the board's family."""

import dataclasses

import pytest

from qfab.base.errors import QfabError
from qfab.boards.registry import TOP_RESERVE, budget_for, get_board
from qfab.compiler.compile import compile_graph
from qfab.compiler.datasets import digits
from qfab.compiler.load import load_graph
from qfab.compiler.ptq import QuantConfig


def _mlp(bits):
    from importlib.resources import files
    return load_graph(str(files("qfab.compiler") / "data" / "digits_mlp.onnx"), digits("flat")[0],
                      QuantConfig(w_bits=bits, a_bits=bits))


def test_budget_leaves_room_for_the_board_top():
    b = budget_for("icebreaker")
    keep = TOP_RESERVE["ice40"]
    assert (b.luts, b.ffs, b.dsps, b.bram_bits, b.family) == \
        (5280 - keep["luts"], 5280 - keep["ffs"], 8, 29 * 4096, "ice40")
    assert b.logic_cells == int(5280 * 0.90) - keep["logic_cells"]     # room for nextpnr to place
    assert keep["logic_cells"] >= 817 + 0.75 * 411        # the v2 link alone, synthesized (digits MLP)
    e = budget_for(get_board("ulx3s_85f"))
    assert e.family == "ecp5" and e.bram_bits == 208 * 18432
    assert e.luts == int(83640 * 0.75) - TOP_RESERVE["ecp5"]["luts"]       # room for nextpnr to route
    with pytest.raises(QfabError, match="unknown board 'nexys'"):
        budget_for("nexys")


@pytest.mark.parametrize("board", ["icebreaker", pytest.param("ulx3s_85f", marks=pytest.mark.slow)])
def test_board_designs_fit_their_budget_in_their_family(tmp_path, board):
    budget = budget_for(board)
    est = compile_graph(_mlp(4), tmp_path, budget=budget, log=lambda *a: None).manifest.estimates
    assert est.family == budget.family
    for key in ("luts", "ffs", "dsps", "bram_bits", "logic_cells"):
        if getattr(budget, key) is not None:
            assert getattr(est.total, key) <= getattr(budget, key), key
    assert (est.total.logic_cells is not None) == (budget.family == "ice40")
    block = 4096 if budget.family == "ice40" else 18432
    assert est.total.bram_bits == est.total.bram_blocks * block


def test_w8a8_on_an_up5k_fits_without_dsps(tmp_path):
    """Requantization in logic (shift-add, thresholds) when the UP5K's 8 DSPs would not do."""
    budget = budget_for("icebreaker")
    est = compile_graph(_mlp(8), tmp_path, budget=budget, log=lambda *a: None).manifest.estimates
    assert est.total.dsps == 0 and est.total.logic_cells <= budget.logic_cells


def test_too_large_even_fully_folded_names_the_resource_and_the_bits(tmp_path):
    tiny = dataclasses.replace(budget_for("icebreaker"), logic_cells=600)
    with pytest.raises(QfabError, match=r"even fully folded: estimated logic cells \d+ > 600 available; "
                                        r"use fewer bits \(qfab --wbits/--abits"):
        compile_graph(_mlp(8), tmp_path, budget=tiny, log=lambda *a: None)




def test_the_digits_cnn_w8a8_fits_the_up5k_on_its_dsps(tmp_path):
    """Fully folded with every requantization in logic it fits the UP5K's budget (the shift-and-add
    multiply's adder as wide as the accumulator) but fills more than 95 % of its cells, which
    nextpnr did not route in 17 minutes: `--board` puts the first layer's requantization on the
    idle SB_MAC16s (`spend_dsps`). With no DSPs it is all in logic, about 2 % more cells than
    the UP5K's budget since every multi-cycle requantization has a skid before it on the iCE40
    (`mac_queue`: the clock's sake): refused there, naming the cells, and fitted with 2 % more;
    with a tenth fewer cells it is refused, naming the cells and the bits."""
    from importlib.resources import files
    cnn = load_graph(str(files("qfab.compiler") / "data" / "digits_cnn.onnx"), digits("NCHW")[0][:300],
                     QuantConfig(w_bits=8, a_bits=8))
    budget = budget_for("icebreaker")
    manifest = compile_graph(cnn, tmp_path / "w8", budget=budget, log=lambda *a: None).manifest
    est = manifest.estimates.total
    assert est.logic_cells <= budget.logic_cells and 0 < est.dsps <= budget.dsps
    modes = [s.requant for s in manifest.stages if s.kind == "mvau"]
    assert "multiply" in modes and set(modes) != {"multiply"}
    none = dataclasses.replace(budget, dsps=0)
    with pytest.raises(QfabError, match=rf"even fully folded: estimated logic cells \d+ > {none.logic_cells} "):
        compile_graph(cnn, tmp_path / "w8_logic", budget=none, log=lambda *a: None)
    none = dataclasses.replace(none, logic_cells=int(budget.logic_cells * 1.02))
    manifest = compile_graph(cnn, tmp_path / "w8_logic", budget=none, log=lambda *a: None).manifest
    assert manifest.estimates.total.logic_cells <= none.logic_cells and manifest.estimates.total.dsps == 0
    assert {s.requant for s in manifest.stages if s.kind == "mvau"} == {"shift_add"}
    small = dataclasses.replace(budget, logic_cells=int(budget.logic_cells * 0.9))
    with pytest.raises(QfabError, match=rf"even fully folded: estimated logic cells \d+ > {small.logic_cells} "
                                        r"available; use fewer bits"):
        compile_graph(cnn, tmp_path / "none", budget=small, log=lambda *a: None)
