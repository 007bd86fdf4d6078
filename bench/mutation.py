"""Mutation score of the modules whose mistakes would be silent, with mutmut 3.

    python bench/mutation.py [--modules intops,reference,protocol,requant,arith] [--work /tmp/qfab-mutation]
                             [--source CHECKOUT] [--jobs 1] [--timeout-multiplier 3] [--time-limit MINUTES]
                             [--resume | --survivors | --mutants GLOB]

Mutation testing rewrites source files, so this never touches the checkout it reads: for each
module it lays out a scratch copy ``WORK/<module>/`` of the checkout's working tree (committed,
modified and untracked files) as an ordinary ``qfab/`` package (mutmut derives module names from
file paths, and the repository's folders install as ``qfab.*`` through setuptools' package-dir),
with the tests and the pytest settings, and runs ``mutmut run`` there with a virtual environment
``WORK/venv`` (``--system-site-packages`` plus mutmut from PyPI; qfab itself is not installed:
mutmut puts its mutated copy first on ``sys.path``). Each mutant runs only the fast tests of
`MODULES` that call the mutated function (mutmut records which). Prints a table: killed, survived,
no tests (a mutated function no selected test calls: counted as survived), timeouts (counted as
killed), score = killed / all. The survivors are listed in ``WORK/<module>/survivors.txt``; see one
with ``cd WORK/<module> && WORK/venv/bin/mutmut show <name>``.

mutmut forks one child per mutant from a process that has imported the tests already; ``--jobs``
children at a time (default 1: the other core stays free). A mutant whose tests run longer than
``--timeout-multiplier`` times (their clean duration plus a second) is stopped and counts as killed
(mutmut's own default, 15, let each mutant that hangs a hardware pipeline simulate for minutes).

Partial runs: mutmut keeps its state in ``WORK/<module>/mutants/``. ``--resume`` stages the checkout
over it instead of starting afresh, and runs the mutants that have no result yet (a function whose
source changed gets new mutants; tests added since are traced, old verdicts stay). ``--survivors``
reruns only the previous run's survivors (after adding tests: the final score without rerunning the
killed ones); ``--mutants GLOB`` runs the mutants matching a name pattern, e.g.
``'qfab.hw.requant.x_requantize__mutmut_*'`` (one function). ``--time-limit`` stops mutmut after so
many minutes and reports what was run (the rest as "not run"; ``--resume`` goes on from there).
mutmut keeps old verdicts only while the module's test files (`MODULES`) and pytest arguments
(`PYTEST_ARGS`, ``--timeout-multiplier`` for timeouts) stay the same; it starts over otherwise
(with ``--survivors``, the mutants not rerun then show as "not run").

Measured on this machine (2 cores, one for the run, the other busy): see docs/testing.md, which lists
the scores and the equivalent mutants.
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent

# module: (files to mutate, in the qfab package layout; the fast tests that exercise them)
MODULES = {
    "intops": (["qfab/compiler/intops.py"], ["tests/compiler/test_intops.py"]),
    "reference": (["qfab/compiler/reference.py"], ["tests/compiler/test_reference_nodes.py"]),
    "protocol": (["qfab/boards/host/protocol.py"], ["tests/boards/test_protocol.py"]),
    "requant": (["qfab/hw/requant.py"], ["tests/hw/test_requant.py", "tests/hw/test_requant_mutants.py"]),
    "arith": (["qfab/hw/_arith.py"], ["tests/hw/test_mac.py", "tests/hw/test_arith_mutants.py"]),
}
# extra pytest arguments per module: test_mac's hypothesis test (50 random arrays, simulated) would
# run for every surviving mutant; the corners, the extremes, DSP packing and the helpers' own tests stay
PYTEST_ARGS = {"arith": ["-k", "not test_sim or corners or extremes or dsp_packing"]}


def _run(cmd, cwd=None, **kw):
    return subprocess.run([str(c) for c in cmd], cwd=cwd, check=True, text=True, capture_output=True, **kw)


def working_tree(source):
    """Relative paths of the checkout's files as they are now: tracked (unless deleted) and untracked."""
    out = _run(["git", "ls-files", "-c", "-o", "--exclude-standard"], cwd=source).stdout.split()
    return [p for p in out if (source / p).is_file()]


def stage(source, dest, files, tests, pytest_args=(), *, fresh=True, timeout_multiplier=3.0):
    """``dest``: the checkout laid out as the installed ``qfab`` package, its tests, and a
    pyproject.toml with the checkout's pytest settings and the mutmut settings for ``files``.
    ``fresh``: remove what a previous run left (else copy over it, keeping mutmut's state)."""
    if fresh and dest.exists():
        shutil.rmtree(dest)
    project = tomllib.loads((source / "pyproject.toml").read_text())
    package_dir = project["tool"]["setuptools"]["package-dir"]
    folders = sorted(package_dir.items(), key=lambda kv: -len(kv[1]))   # the deepest mapping wins
    for rel in working_tree(source):
        if rel.startswith("tests/"):
            target = dest / rel
        else:
            match = next(((name, folder) for name, folder in folders if rel.startswith(folder + "/")), None)
            if match is None:
                continue
            name, folder = match
            target = dest / pathlib.Path(*name.split(".")) / rel[len(folder) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, target)
    tests = [t for t in tests if (dest / t).is_file()]
    ini = project["tool"]["pytest"]["ini_options"]
    lines = ["[tool.pytest.ini_options]"] + [f"{k} = {json.dumps(v)}" for k, v in ini.items()]
    lines += ["", "[tool.mutmut]", 'source_paths = ["qfab"]', f"only_mutate = {json.dumps(files)}",
              f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
              f"pytest_add_cli_args = {json.dumps(['-p', 'no:cacheprovider', '-m', 'not slow', *pytest_args])}",
              f"timeout_multiplier = {float(timeout_multiplier)}"]
    (dest / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return tests


def venv(work):
    python = work / "venv" / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", "--system-site-packages", work / "venv"])
        _run([python, "-m", "pip", "install", "-q", "mutmut>=3.8,<4"])
    return work / "venv" / "bin" / "mutmut"


def _results(mutmut, dest, env):
    """mutmut's verdict for every mutant of the last run: ``{name: verdict}``."""
    status = {}
    for line in _run([mutmut, "results", "--all", "true"], cwd=dest, env=env).stdout.splitlines():
        if ": " in line:
            mutant, verdict = line.strip().rsplit(": ", 1)
            status[mutant] = verdict
    return status


def _mutmut_run(mutmut, dest, env, args, time_limit):
    """``mutmut run ARGS`` in ``dest``; after ``time_limit`` seconds it is interrupted as by Ctrl-C
    (it stops its children and keeps the verdicts so far). Returns the exit code, None if stopped."""
    with open(dest / "run.log", "w") as log:
        proc = subprocess.Popen([str(mutmut), "run", *args], cwd=dest, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=time_limit)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)      # its own session: mutmut and its children only
                proc.wait()
            return None


def mutate(name, source, work, mutmut, jobs, *, resume=False, survivors=False, mutants=None, time_limit=None,
           timeout_multiplier=3.0):
    files, tests = MODULES[name]
    dest = work / name
    keep = resume or survivors or mutants is not None
    if keep and not (dest / "mutants").is_dir():
        raise SystemExit(f"{name}: nothing to resume in {dest}")
    tests = stage(source, dest, files, tests, PYTEST_ARGS.get(name, ()), fresh=not keep,
                  timeout_multiplier=timeout_multiplier)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    names = []
    if survivors:
        names = [m for m, v in _results(mutmut, dest, env).items() if v in ("survived", "no tests")]
    elif mutants is not None:
        names = [mutants]
    start = time.time()
    code = 0
    if not survivors or names:
        code = _mutmut_run(mutmut, dest, env, ["--max-children", str(jobs), *names], time_limit)
    if code:
        raise SystemExit(f"{name}: mutmut failed ({code}); see {dest / 'run.log'}")
    status = _results(mutmut, dest, env)
    (dest / "survivors.txt").write_text("".join(f"{m}: {v}\n" for m, v in status.items()
                                                if v in ("survived", "no tests")))
    count = {v: sum(1 for s in status.values() if s == v) for v in set(status.values())}
    killed = count.get("killed", 0) + count.get("timeout", 0)
    not_run = count.get("not checked", 0) + count.get("check was interrupted by user", 0)
    return {"module": name, "files": files, "tests": tests, "mutants": len(status), "killed": killed,
            "survived": count.get("survived", 0), "no_tests": count.get("no tests", 0), "not_run": not_run,
            "other": len(status) - killed - not_run - count.get("survived", 0) - count.get("no tests", 0),
            "score": killed / max(1, len(status)), "seconds": round(time.time() - start),
            "stopped": code is None, "rerun": len(names) if survivors else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", default=",".join(MODULES))
    ap.add_argument("--work", default="/tmp/qfab-mutation", help="scratch folder (its module folders are replaced "
                                                                 "unless resuming)")
    ap.add_argument("--source", default=str(ROOT), help="the checkout to copy (default: this one)")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1: one core)")
    ap.add_argument("--timeout-multiplier", type=float, default=3.0,
                    help="a mutant is stopped (and killed) after this many times its tests' clean duration")
    ap.add_argument("--time-limit", type=float, help="stop each module's run after this many minutes")
    again = ap.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="go on from the last run's state")
    again.add_argument("--survivors", action="store_true", help="rerun only the last run's survivors")
    again.add_argument("--mutants", metavar="GLOB", help="run only the mutants matching GLOB (mutmut's names)")
    args = ap.parse_args()
    names = args.modules.split(",")
    for n in names:
        if n not in MODULES:
            raise SystemExit(f"unknown module {n!r}; choose from {', '.join(MODULES)}")
    work = pathlib.Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    mutmut = venv(work)
    results = []
    for n in names:
        r = mutate(n, pathlib.Path(args.source).resolve(), work, mutmut, args.jobs, resume=args.resume,
                   survivors=args.survivors, mutants=args.mutants, timeout_multiplier=args.timeout_multiplier,
                   time_limit=None if args.time_limit is None else 60 * args.time_limit)
        results.append(r)
        print(f"{n}: {r['killed']} of {r['mutants']} killed in {r['seconds']} s"
              + (f" ({r['not_run']} not run: stopped at the time limit)" if r["stopped"] else "")
              + (f" (reran {r['rerun']} survivors)" if r["rerun"] is not None else ""), flush=True)
    print(f"\n{'module':<10} {'file':<30} {'mutants':>7} {'killed':>6} {'survived':>8} {'no tests':>8} "
          f"{'not run':>7} {'score':>6} {'time':>6}")
    for r in results:
        print(f"{r['module']:<10} {', '.join(r['files']):<30} {r['mutants']:>7} {r['killed']:>6} "
              f"{r['survived']:>8} {r['no_tests']:>8} {r['not_run']:>7} {100 * r['score']:>5.1f}% {r['seconds']:>5}s")
    (work / "scores.json").write_text(json.dumps(results, indent=1))
    print(f"\nsurvivors: {work}/<module>/survivors.txt")


if __name__ == "__main__":
    main()
