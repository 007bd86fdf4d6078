"""One point of a sweep (`qfab.sweep`), run where a worker runs it: quantize, measure the
accuracy, compile for the board (a target interval checked against the board's budget before any
hardware is built), optionally simulate and build the bitstream, all in a temporary folder whose
build comes back as a ``.tar.gz`` with the result, so that no file system is shared with the
machine that runs the sweep."""

from __future__ import annotations

import datetime
import io
import pathlib
import tarfile
import tempfile
import time
import traceback

from qfab.base.errors import QfabError

__all__ = ["run_point", "RESOURCES"]


def run_point(job) -> tuple[dict, bytes, str]:
    """Run one point (a `qfab.sweep.Job`) in a temporary folder: ``(result, build folder as a .tar, log text)``. Any
    `QfabError` ends the point as ``failed``; an unexpected exception as ``error`` (not cached)."""
    lines = []
    result = {"status": "ok", "error": "", "seconds": {}, "started": _now()}
    with tempfile.TemporaryDirectory(prefix="qfab_sweep_") as tmp:
        build_dir = pathlib.Path(tmp) / "build"
        try:
            _steps(job, pathlib.Path(tmp), build_dir, result, lines.append)
        except QfabError as e:
            result.update(status="failed", error=str(e))
        except Exception as e:                          # noqa: BLE001 - recorded, the sweep goes on
            result.update(status="error", error=f"{type(e).__name__}: {e}")
            lines.append(traceback.format_exc())
        result["finished"] = _now()
        tar = io.BytesIO()
        if build_dir.is_dir():
            with tarfile.open(fileobj=tar, mode="w:gz") as t:
                t.add(build_dir, arcname="build")
    return result, tar.getvalue(), "\n".join(lines) + "\n"


def _now():
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _steps(job, tmp, build_dir, result, log):
    from qfab import flow
    from qfab.boards.registry import budget_for, get_board
    from qfab.compiler import reference
    inputs, point, options = job.inputs, job.point, job.options
    spec = get_board(point.board)
    budget = budget_for(spec)
    seconds = result["seconds"]
    model = tmp / inputs.model_name
    model.write_bytes(inputs.model_bytes)

    t = time.perf_counter()
    config = flow.quant_config(w_bits=point.bits, a_bits=point.bits, calib_method=options.calib_method)
    graph = flow.quantize(model, inputs.calib, config, log=log).graph
    seconds["quantize"] = time.perf_counter() - t

    x = inputs.evaluation
    if x is not None:
        t = time.perf_counter()
        top1 = reference.run_float(graph, x).reshape(len(x), -1).argmax(-1)
        if inputs.labels is not None:
            result["accuracy"] = float((top1 == inputs.labels).mean())
        elif model.suffix == ".onnx":
            result["agreement"] = _float_agreement(model, x, top1)
        seconds["accuracy"] = time.perf_counter() - t

    t = time.perf_counter()
    if point.target_ii is None:
        compiled = flow.compile(graph, build_dir, board=spec.name, style=options.style, log=log).build
    else:
        _check_fits(graph, point.target_ii, budget, options.style, result)
        compiled = _compile_at(graph, build_dir, point.target_ii, spec.family, options.style, log)
    seconds["compile"] = time.perf_counter() - t
    _record_build(compiled.manifest, spec, budget, result)

    if options.simulate:
        if x is None:
            raise QfabError("--simulate needs inputs: give --test X.npy or --calib X.npy")
        t = time.perf_counter()
        sim = flow.simulate(compiled, x, log=log)
        seconds["simulate"] = time.perf_counter() - t
        result.update(sim_interval=sim.report.interval, sim_latency=sim.report.latency, bit_exact=sim.bit_exact)
        if inputs.labels is not None:
            top1 = sim.outputs.reshape(len(x), -1).argmax(-1)
            result["sim_accuracy"] = float((top1 == inputs.labels).mean())

    if options.bitstream:
        t = time.perf_counter()
        for attempt in range(options.refolds + 1):
            try:
                report = _bitstream(compiled, spec.name, log)
                break
            except QfabError as e:
                if "does not fit" not in str(e) or attempt == options.refolds:
                    raise
                ii = compiled.manifest.initiation_interval * 2
                log(f"does not fit ({e}); refolding at II {ii}")
                compiled = _compile_at(graph, build_dir, ii, spec.family, options.style, log)
                _record_build(compiled.manifest, spec, budget, result)
                result["refolds"] = attempt + 1
        seconds["bitstream"] = time.perf_counter() - t
        ii = compiled.manifest.initiation_interval
        result.update(fmax_mhz=report.fmax_mhz, clock_mhz=report.requested_mhz, timing_met=report.timing_met,
                      inferences_per_s_fmax=report.fmax_mhz * 1e6 / ii if report.fmax_mhz else None,
                      inferences_per_s=report.requested_mhz * 1e6 / ii, bitstream=report.as_dict())
    _page(compiled, point, inputs, result, log)


def _bitstream(build, board, log):
    """`qfab.boards.bitstream.build_bitstream`, its report kept in the build; unlike
    `qfab.flow.bitstream` the board does not remember this build for ``qfab run``: it lives in a
    temporary folder until the sweep copies it."""
    from qfab.boards.bitstream import build_bitstream
    report = build_bitstream(build.folder, board, log=log)
    build.write_report(f"bitstream_{board}", report.as_dict())
    return report


def _page(build, point, inputs, result, log):
    """The point's accuracy into its build's report page (`qfab.report`), when there is one."""
    try:
        from qfab import report
        if result.get("accuracy") is not None:
            report.record_accuracy(build, [{"w_bits": point.bits, "a_bits": point.bits, "accuracy": result["accuracy"],
                                            "samples": len(inputs.labels), "this_build": True}],
                                   dataset="the sweep's test inputs")
        report.build_report(build.folder)
    except Exception as e:                              # noqa: BLE001 - the page never fails the point
        log(f"warning: no report page for this point ({type(e).__name__}: {e})")


def _float_agreement(model, x, top1):
    """Top-1 agreement of the quantized model with the float model (a float ONNX model only)."""
    from qfab.compiler.fgraph import forward
    from qfab.compiler.frontends.onnx_import import import_onnx
    from qfab.compiler.load import is_quantized_onnx
    fg = import_onnx(model)
    if is_quantized_onnx(fg):
        return None
    want = forward(fg, x)[fg.outputs[0]].reshape(len(x), -1).argmax(-1)
    return float((want == top1).mean())


def _check_fits(graph, target_ii, budget, style, result):
    """Refuse a target interval whose design does not fit the board, by the estimate and before
    any hardware is built (lowering a large unfolded design takes minutes)."""
    from qfab.compiler import estimate
    from qfab.compiler.compile import design_estimates
    from qfab.compiler.folding import choose_folding, stages_of
    stages = stages_of(graph)
    folds = choose_folding(stages, target_ii=target_ii, cost=estimate.cost_luts, style=style)
    total = design_estimates(graph, stages, folds, budget.family)[2]
    ok, why = budget.check(total)
    if not ok:
        _record_resources(total.rounded() | {"logic_cells": _cells(total, budget.family)}, result, budget)
        result["fits"] = False
        raise QfabError(f"does not fit the board at II {target_ii}: {why}")


def _cells(total, family):
    from qfab.compiler import estimate
    cells = estimate.logic_cells(total, family)
    return round(cells) if cells is not None else None


def _compile_at(graph, build_dir, ii, family, style, log):
    from qfab.compiler.compile import compile_graph
    return compile_graph(graph, build_dir, target_ii=ii, family=family, style=style, log=log)


RESOURCES = ("luts", "ffs", "dsps", "bram_bits", "logic_cells")


def _record_resources(total, result, budget):
    """The estimate's resources and ``budget_share``: the largest share of one of the budget's
    resources the design uses (above 1: it does not fit)."""
    result.update({key: total.get(key) for key in RESOURCES})
    shares = [total[key] / limit for key in RESOURCES
              if (limit := getattr(budget, key)) and total.get(key) is not None]
    result["budget_share"] = round(max(shares), 4) if shares else None


def _record_build(manifest, spec, budget, result):
    ii = manifest.initiation_interval
    _record_resources(manifest.estimates.total.as_dict(), result, budget)
    clock = spec.default_mhz or spec.clock_mhz
    result.update(ii=ii, latency=manifest.latency_estimate, clock_mhz=clock, inferences_per_s=clock * 1e6 / ii,
                  fits=budget.check(manifest.estimates.total)[0])
