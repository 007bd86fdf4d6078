"""Mutation score of the modules whose mistakes would be silent, with mutmut 3.

    python bench/mutation.py [--modules intops,reference,protocol,requant,arith] [--work /tmp/qfab-mutation]
                             [--source CHECKOUT] [--jobs 2]

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

mutmut forks one child per mutant from a process that has imported the tests already. Measured on
2 cores shared with other work: intops 7-17 min, reference 9 min, protocol 11-13 min, requant over
30 min (every mutant simulates hardware; mutants that hang the pipeline run to mutmut's timeout),
arith not finished yet. docs/testing.md lists the scores and the equivalent mutants.
"""

import argparse
import json
import os
import pathlib
import shutil
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
    "arith": (["qfab/hw/_arith.py"], ["tests/hw/test_mac.py"]),
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


def stage(source, dest, files, tests, pytest_args=()):
    """``dest``: the checkout laid out as the installed ``qfab`` package, its tests, and a
    pyproject.toml with the checkout's pytest settings and the mutmut settings for ``files``."""
    if dest.exists():
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
              f"pytest_add_cli_args = {json.dumps(['-p', 'no:cacheprovider', '-m', 'not slow', *pytest_args])}"]
    (dest / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return tests


def venv(work):
    python = work / "venv" / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", "--system-site-packages", work / "venv"])
        _run([python, "-m", "pip", "install", "-q", "mutmut>=3.8,<4"])
    return work / "venv" / "bin" / "mutmut"


def mutate(name, source, work, mutmut, jobs):
    files, tests = MODULES[name]
    dest = work / name
    tests = stage(source, dest, files, tests, PYTEST_ARGS.get(name, ()))
    start = time.time()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run([str(mutmut), "run", "--max-children", str(jobs)], cwd=dest, env=env,
                         capture_output=True, text=True)
    (dest / "run.log").write_text(run.stdout[-20000:] + run.stderr[-20000:])
    if run.returncode:
        raise SystemExit(f"{name}: mutmut failed ({run.returncode}); see {dest / 'run.log'}")
    results = _run([mutmut, "results", "--all", "true"], cwd=dest, env=env).stdout
    status = {}
    for line in results.splitlines():
        if ": " in line:
            mutant, verdict = line.strip().rsplit(": ", 1)
            status[mutant] = verdict
    (dest / "survivors.txt").write_text("".join(f"{m}: {v}\n" for m, v in status.items()
                                                if v in ("survived", "no tests")))
    count = {v: sum(1 for s in status.values() if s == v) for v in set(status.values())}
    killed = count.get("killed", 0) + count.get("timeout", 0)
    return {"module": name, "files": files, "tests": tests, "mutants": len(status), "killed": killed,
            "survived": count.get("survived", 0), "no_tests": count.get("no tests", 0),
            "other": len(status) - killed - count.get("survived", 0) - count.get("no tests", 0),
            "score": killed / max(1, len(status)), "seconds": round(time.time() - start)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", default=",".join(MODULES))
    ap.add_argument("--work", default="/tmp/qfab-mutation", help="scratch folder (its module folders are replaced)")
    ap.add_argument("--source", default=str(ROOT), help="the checkout to copy (default: this one)")
    ap.add_argument("--jobs", type=int, default=2, help="mutants run at once")
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
        results.append(mutate(n, pathlib.Path(args.source).resolve(), work, mutmut, args.jobs))
        print(f"{n}: {results[-1]['killed']} of {results[-1]['mutants']} killed in {results[-1]['seconds']} s",
              flush=True)
    print(f"\n{'module':<10} {'file':<30} {'mutants':>7} {'killed':>6} {'survived':>8} {'no tests':>8} "
          f"{'score':>6} {'time':>6}")
    for r in results:
        print(f"{r['module']:<10} {', '.join(r['files']):<30} {r['mutants']:>7} {r['killed']:>6} "
              f"{r['survived']:>8} {r['no_tests']:>8} {100 * r['score']:>5.1f}% {r['seconds']:>5}s")
    (work / "scores.json").write_text(json.dumps(results, indent=1))
    print(f"\nsurvivors: {work}/<module>/survivors.txt")


if __name__ == "__main__":
    main()
