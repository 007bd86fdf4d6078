"""``qfab sweep``: a design-space sweep. Every point of the grid boards x bits x target intervals is
quantized, compiled for its board and estimated (optionally simulated and built into a bitstream)
as an independent task, on Ray when it is installed (the ``[sweep]`` extra: a local Ray instance on
this machine's cores, or an existing cluster with ``address``), else in local processes.

    from qfab import sweep
    rows = sweep.sweep("digits_mlp.onnx", calib=x, boards=["icebreaker", "ulx3s_85f"], bits=[4, 8],
                       out_dir="sweep")

Each point's result is kept in ``DIR/points/<key>/`` (``result.json``, ``log.txt`` and its build
folder), the key a hash of the model's bytes, the data, the point, the options and qfab's version:
a rerun takes done points from there. A point that fails (it does not fit its board, a target
interval cannot be met) is recorded with its error and the others go on. A point's steps are in
`qfab.sweep_point`; the tables, the Pareto plot and the page are written by `qfab.sweep_output`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from qfab.base.errors import QfabError
from qfab.sweep_point import run_point

__all__ = ["Point", "Inputs", "Options", "Job", "grid", "job_key", "run_point", "run_jobs", "sweep",
           "add_command", "ray_available"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class Point:
    """One design: ``board`` (a registry name), ``bits`` (weights and activations) and
    ``target_ii`` (cycles per inference; None: the fastest design that fits the board)."""
    board: str
    bits: int
    target_ii: int | None = None

    def describe(self) -> str:
        return f"{self.board} w{self.bits}a{self.bits} " + (f"II {self.target_ii}" if self.target_ii else "folded for the board")


@dataclass(frozen=True)
class Inputs:
    """What every point of one model shares: the model file's name and bytes, calibration data,
    and optional test inputs (default: the calibration data) and their labels."""
    model_name: str
    model_bytes: bytes = dataclasses.field(repr=False)
    calib: np.ndarray | None = dataclasses.field(repr=False, default=None)
    test: np.ndarray | None = dataclasses.field(repr=False, default=None)
    labels: np.ndarray | None = dataclasses.field(repr=False, default=None)

    @classmethod
    def load(cls, model, calib=None, test=None, labels=None) -> Inputs:
        """From files (``calib``, ``test``, ``labels``: .npy paths or arrays)."""
        from qfab import flow
        path = pathlib.Path(model)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise QfabError(f"model {model}: no such file") from None
        except IsADirectoryError:
            raise QfabError(f"model {model}: is a folder, not a model file") from None

        def array(a, what):
            return flow.load_array(a, what) if isinstance(a, (str, os.PathLike)) else a
        inputs = cls(path.name, data, array(calib, "calibration data"), array(test, "test inputs"),
                     array(labels, "labels"))
        x = inputs.evaluation
        if inputs.labels is not None:
            if x is None:
                raise QfabError("labels need test inputs (--test X.npy) or calibration data (--calib) to go with")
            if inputs.labels.ndim != 1 or len(inputs.labels) != len(x):
                raise QfabError(f"labels have shape {inputs.labels.shape}; expected one label per test input "
                                f"({len(x)},)")
        return inputs

    @property
    def evaluation(self) -> np.ndarray | None:
        """The inputs accuracy and simulation use: the test inputs, else the calibration data."""
        return self.test if self.test is not None else self.calib

    def digest(self) -> str:
        h = hashlib.sha256(self.model_bytes)
        for a in (self.calib, self.test, self.labels):
            h.update(b"-" if a is None else f"{a.dtype.str}{a.shape}".encode() + np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class Options:
    """The steps every point runs besides quantize, compile and estimate, and how."""
    simulate: bool = False
    bitstream: bool = False
    calib_method: str | None = None
    style: str = "bit_parallel"
    refolds: int = 0        # a bitstream that does not fit: double the interval and retry up to this often


@dataclass(frozen=True)
class Job:
    inputs: Inputs
    point: Point
    options: Options


def grid(boards: Iterable[str], bits: Iterable[int], target_iis: Iterable[int | None] = (None,)) -> list[Point]:
    """Every point of boards x bits x target intervals, boards checked against the registry."""
    from qfab.boards.registry import get_board
    return [Point(get_board(b).name, int(w), ii) for b in boards for w in bits for ii in (list(target_iis) or [None])]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("qfab")
    except PackageNotFoundError:
        from qfab import __version__
        return __version__


def job_key(job: Job, digest: str | None = None) -> str:
    """The point's cache key: a hash of the model and data, the point, the options, qfab's version."""
    doc = {"inputs": digest or job.inputs.digest(), "point": dataclasses.asdict(job.point),
           "options": dataclasses.asdict(job.options), "qfab": _version()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


# -- running jobs: Ray, or local processes ------------------------------------------------------

def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def run_jobs(jobs: Sequence[Job], *, address: str | None = None, workers: int | None = None, engine: str = "auto",
             log: Log = print) -> Iterable[tuple[int, tuple[dict, bytes, str]]]:
    """Run `run_point` on every job; yield ``(index, result)`` as each finishes. ``engine``:
    ``"ray"``, ``"processes"`` or ``"auto"`` (Ray if installed). Ray: the instance already
    initialized in this process, else one started here (``address``: an existing cluster; else
    local with ``workers`` CPUs, default all) and shut down at the end."""
    if engine not in ("auto", "ray", "processes"):
        raise QfabError(f"engine must be auto, ray or processes, not {engine!r}")
    if engine == "auto":
        engine = "ray" if ray_available() else "processes"
        if engine == "processes":
            log(f"Ray is not installed (pip install 'qfab[sweep]'): running the {len(jobs)} points in local "
                f"processes")
    if address and engine != "ray":
        raise QfabError("--address needs Ray: pip install 'qfab[sweep]'")
    if engine == "ray":
        yield from _run_ray(jobs, address, workers, log)
    else:
        yield from _run_processes(jobs, workers)


def _run_ray(jobs, address, workers, log):
    try:
        import ray
    except ImportError:
        raise QfabError("Ray is not installed: pip install 'qfab[sweep]'") from None
    started = not ray.is_initialized()
    pending = {}
    if started:
        try:
            # "local": a new instance here, even when `ray start` left one running on this machine
            local = {} if address else dict(num_cpus=workers, include_dashboard=False)
            ray.init(address=address or "local", log_to_driver=False, logging_level=logging.ERROR, **local)
        except (ConnectionError, RuntimeError, ValueError) as e:
            hint = ("; a cluster with token authentication needs RAY_AUTH_MODE=token and its token here "
                    "(docs/sweep.md)" if address else "")
            raise QfabError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {e}{hint}") from None
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        log(f"Ray: {'cluster at ' + address if address else 'local instance'}, {cpus} CPUs")
        task = ray.remote(num_cpus=1, max_retries=0)(_point_task)
        shared = {}
        for i, job in enumerate(jobs):       # each model's inputs go into the object store once
            if id(job.inputs) not in shared:
                shared[id(job.inputs)] = ray.put(job.inputs)
            pending[task.remote(shared[id(job.inputs)], job.point, job.options)] = i
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            try:
                yield i, ray.get(done[0])
            except ray.exceptions.RayError as e:
                yield i, ({"status": "error", "error": f"the Ray task failed: {str(e).splitlines()[0]}",
                           "seconds": {}}, b"", "")
    finally:
        for ref in pending:                 # interrupted: the points not done are not left running
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def _point_task(inputs, point, options):
    """`run_point` as a Ray task (Ray resolves ``inputs`` from its object store)."""
    return run_point(Job(inputs, point, options))


def _run_processes(jobs, workers):
    import concurrent.futures as cf
    import multiprocessing
    context = multiprocessing.get_context("spawn")       # no fork of a process that may hold threads
    pool = cf.ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, mp_context=context)
    try:
        futures = {pool.submit(run_point, job): i for i, job in enumerate(jobs)}
        for future in cf.as_completed(futures):
            try:
                result = future.result()
            except Exception as e:                          # noqa: BLE001 - a crashed worker: that point's error
                result = ({"status": "error", "error": f"{type(e).__name__}: {e}", "seconds": {}}, b"", "")
            yield futures[future], result
    finally:
        pool.shutdown(cancel_futures=True)


# -- the sweep with its cache ---------------------------------------------------------------------

RESULT = "result.json"


def sweep(model, *, calib=None, boards: Iterable[str], bits: Iterable[int], target_iis: Iterable[int | None] = (None,),
          out_dir, test=None, labels=None, options: Options = Options(), address: str | None = None,
          workers: int | None = None, engine: str = "auto", log: Log = print) -> list[dict]:
    """Run the grid for ``model`` (with ``calib``, ``test``, ``labels``: .npy paths or arrays) and
    write the tables, plot and page into ``out_dir``; return the rows (see `qfab.sweep_output`)."""
    from qfab import sweep_output
    inputs = Inputs.load(model, calib, test, labels)
    points = grid(boards, bits, target_iis)
    _check_model(model, inputs)
    rows = run_points([Job(inputs, p, options) for p in points], out_dir, address=address, workers=workers,
                      engine=engine, log=log)
    for line in sweep_output.write_all(rows, out_dir, title=f"qfab sweep: {inputs.model_name}", log=log):
        log(line)
    return rows


def _check_model(path, inputs):
    """A sweep varies the bits of a float ONNX model: refuse anything else before any point runs."""
    from qfab.compiler.frontends.onnx_import import import_onnx
    from qfab.compiler.load import is_quantized_onnx
    if pathlib.Path(path).suffix != ".onnx":
        raise QfabError(f"model {path}: a sweep quantizes a float ONNX model at each bit width; give the .onnx")
    if is_quantized_onnx(import_onnx(path)):
        raise QfabError(f"model {path} is already quantized: a sweep quantizes a float ONNX model at each bit width")
    if inputs.calib is None:
        raise QfabError(f"model {path} is a float model: give calibration data (--calib X.npy)")


def run_points(jobs: Sequence[Job], out_dir, *, address=None, workers=None, engine="auto", log: Log = print
               ) -> list[dict]:
    """Run the jobs not yet done in ``out_dir/points/`` and return one row per job, in order."""
    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
        raise QfabError(f"sweep folder {out}: exists and is not a folder")
    if not out.absolute().parent.is_dir():
        raise QfabError(f"sweep folder {out}: the folder {out.absolute().parent} does not exist")
    (out / "points").mkdir(parents=True, exist_ok=True)
    digests = {}                            # each model's inputs hashed once
    for j in jobs:
        if id(j.inputs) not in digests:
            digests[id(j.inputs)] = j.inputs.digest()
    keys = [job_key(j, digests[id(j.inputs)]) for j in jobs]
    rows: list[dict | None] = [None] * len(jobs)
    todo = []
    n = len(jobs)
    done = 0
    for i, (job, key) in enumerate(zip(jobs, keys)):
        cached = _load_cached(out / "points" / key)
        if cached is None:
            todo.append(i)
            continue
        rows[i] = _row(job, key, cached, cached=True)
        done += 1
        log(f"[{done}/{n}] {job.point.describe()}: cached ({_summary(rows[i])})")
    if not todo:
        return rows
    for j, (result, tar, text) in run_jobs([jobs[i] for i in todo], address=address, workers=workers,
                                           engine=engine, log=log):
        i = todo[j]
        _save(out / "points" / keys[i], result, tar, text)
        rows[i] = _row(jobs[i], keys[i], result, cached=False)
        done += 1
        log(f"[{done}/{n}] {jobs[i].point.describe()}: {_summary(rows[i])}")
    return rows


def _load_cached(folder):
    try:
        result = json.loads((folder / RESULT).read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("status") in ("ok", "failed") else None


def _save(folder, result, tar, text):
    import shutil
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if tar:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:gz") as t:
            t.extractall(folder, filter="data")
    (folder / "log.txt").write_text(text)
    tmp = folder / (RESULT + ".tmp")          # result.json last: a point is done when it exists
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, folder / RESULT)


def _row(job, key, result, *, cached):
    from qfab.sweep_output import COLUMNS
    row = {column: None for column in COLUMNS if not column.startswith("seconds_")}
    row.update(model=job.inputs.model_name, **dataclasses.asdict(job.point), key=key, cached=cached)
    row.update({k: v for k, v in result.items() if k != "bitstream"})
    return row


def _summary(row):
    if row["status"] != "ok":
        return f"{row['status'].upper()}: {row['error']}"
    parts = [f"II {row['ii']}", f"{row['inferences_per_s']:,.0f} inferences/s at {row['clock_mhz']:g} MHz"]
    if row.get("accuracy") is not None:
        parts.append(f"accuracy {100 * row['accuracy']:.2f}%")
    elif row.get("agreement") is not None:
        parts.append(f"top-1 agreement with the float model {100 * row['agreement']:.2f}%")
    if row.get("fmax_mhz"):
        parts.append(f"Fmax {row['fmax_mhz']:.1f} MHz")
    return ", ".join(parts) + f", {sum(row['seconds'].values()):.1f} s"


# -- the command ---------------------------------------------------------------------------------

def add_command(sub):
    """Add ``qfab sweep`` to the ``qfab`` command's subparsers."""
    from qfab.cli_common import board_help, positive_int
    s = sub.add_parser("sweep", help="design-space sweep over boards, bits and intervals (Ray or local processes)")
    s.add_argument("model", help="MODEL.onnx (float, with --calib)")
    s.add_argument("--calib", metavar="X.npy", help="calibration inputs (float, the model's layout)")
    s.add_argument("--boards", default="icebreaker,ulx3s_85f",
                   help=board_help("comma-separated boards (default icebreaker,ulx3s_85f)"))
    s.add_argument("--bits", default="4,8",
                   help="comma-separated bit widths of weights and activations, 1 to 8 (default 4,8)")
    s.add_argument("--target-ii", metavar="N,...", help="comma-separated intervals (default: each point folded "
                   "for the fastest design that fits its board)")
    s.add_argument("--test", metavar="X.npy", help="inputs for accuracy and --simulate (default: --calib)")
    s.add_argument("--labels", metavar="Y.npy", help="labels of the test inputs: accuracy per point")
    s.add_argument("--calib-method", choices=["minmax", "percentile", "mse"], help="activation range method")
    s.add_argument("--style", choices=["bit_parallel", "bit_serial"], default="bit_parallel")
    s.add_argument("--simulate", action="store_true", help="simulate each point in Verilator (bit-exact check)")
    s.add_argument("--bitstream", action="store_true", help="build each point's bitstream (Fmax)")
    s.add_argument("--address", metavar="RAY_ADDRESS", help="run on this Ray cluster (default: a local instance)")
    s.add_argument("--workers", type=positive_int, metavar="N", help="parallel points (default: all CPUs)")
    s.add_argument("--processes", action="store_true", help="run in local processes even when Ray is installed")
    s.add_argument("-o", "--output", required=True, metavar="DIR", help="sweep folder (reused: done points cached)")
    s.set_defaults(func=cmd_sweep)


def _ints(text, what, low, high):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise QfabError(f"{what} must be comma-separated integers, not {text!r}") from None
    bad = [v for v in values if not low <= v <= high]
    if not values or bad:
        raise QfabError(f"{what} must be integers from {low} to {high}, not {text!r}")
    return values


def cmd_sweep(args):
    bits = _ints(args.bits, "--bits", 1, 8)
    iis = _ints(args.target_ii, "--target-ii", 1, 1 << 30) if args.target_ii else [None]
    boards = [b for b in args.boards.split(",") if b.strip()]
    options = Options(simulate=args.simulate, bitstream=args.bitstream, calib_method=args.calib_method,
                      style=args.style)
    rows = sweep(args.model, calib=args.calib, boards=boards, bits=bits, target_iis=iis, out_dir=args.output,
                 test=args.test, labels=args.labels, options=options, address=args.address, workers=args.workers,
                 engine="processes" if args.processes else "auto", log=lambda m: print(m, flush=True))
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} points done" + (f", {failed} failed" if failed else ""))
    return 1 if failed == len(rows) else 0
