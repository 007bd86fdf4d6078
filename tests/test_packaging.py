"""A normal (non-editable) ``pip install .`` works, also when run from the checkout root.

The checkout's top folders (cli/, base/, hw/, compiler/, sim/, boards/) are mapped to ``qfab.*`` by
pyproject.toml; none is named ``qfab``, so Python started in the checkout root imports the
installed package instead of a partial copy of it. The package is installed into a fresh virtual
environment without a pip of its own (so it uses this environment's pip and setuptools, and finds
the dependencies here, offline), built without build isolation from a copy of the checkout (so the
checkout gets no build/ or egg-info folder).
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

PACKAGE_DIR = PYPROJECT["tool"]["setuptools"]["package-dir"]


def test_every_package_folder_is_listed():
    """A subpackage folder missing from package-dir or packages would be left out of a real install."""
    folders = {str(init.parent.relative_to(ROOT)) for top in {f.split("/")[0] for f in PACKAGE_DIR.values()}
               for init in (ROOT / top).rglob("__init__.py")}
    assert folders == set(PACKAGE_DIR.values())
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == set(PACKAGE_DIR)


def _run(cmd, *, cwd=ROOT, env=None, timeout=600):
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """``(python, qfab script, environment)`` of a venv with qfab installed from a copy of the checkout."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    folders = {folder.split("/")[0] for folder in PACKAGE_DIR.values()}
    for folder in sorted(folders):
        shutil.copytree(ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", tmp / "venv"], cwd=tmp, env=env)
    bin_dir = tmp / "venv" / "bin"
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    _run([bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", source],
         cwd=tmp, env=env)
    return bin_dir / "python", bin_dir / "qfab", env, tmp


@pytest.mark.slow
def test_checkout_root_imports_the_installed_package(venv):
    python, _, env, tmp = venv
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).strip()
    missing = [f"{package}.{path.stem}" for package, folder in PACKAGE_DIR.items()
               for path in (ROOT / folder).glob("*.py")
               if not (pathlib.Path(site, *package.split("."), path.name)).is_file()]
    assert not missing, f"modules not installed: {missing}"
    data = [(package, path.relative_to(ROOT / PACKAGE_DIR[package]))
            for package, patterns in PYPROJECT["tool"]["setuptools"]["package-data"].items()
            for pattern in patterns for path in (ROOT / PACKAGE_DIR[package]).glob(pattern)]
    assert data and all(pathlib.Path(site, *package.split("."), rel).is_file() for package, rel in data), data
    code = ("import qfab, qfab.base.ints, qfab.cli, qfab.compiler.intops, qfab.hw.mac, qfab.sim, qfab.boards\n"
            "for m in (qfab, qfab.base.ints, qfab.cli, qfab.compiler.intops, qfab.hw.mac):\n"
            "    print(m.__file__)\n")
    files = _run([python, "-c", code], env=env).split()
    assert files and all(pathlib.Path(f).is_relative_to(site) for f in files), files


@pytest.mark.slow
def test_cli_runs_from_the_checkout_root(venv):
    python, qfab, env, _ = venv
    assert "usage" in _run([python, "-m", "qfab.cli", "demo", "--help"], env=env)
    assert "usage" in _run([qfab, "--help"], env=env)
    assert "usage" in _run([qfab, "demo", "--help"], env=env)


@pytest.mark.slow
def test_info_on_the_bundled_model_from_the_checkout_root(venv):
    """The installed package data (the digits, the bundled model) and a quick real command."""
    python, qfab, env, tmp = venv
    calib = tmp / "calib.npy"
    _run([python, "-c", "import sys, numpy as np; from qfab.compiler.datasets import digits; "
          "np.save(sys.argv[1], digits('flat')[0][:64])", calib], env=env)
    model = _run([python, "-c", "from importlib.resources import files; "
                  "print(files('qfab.compiler') / 'data' / 'digits_mlp.onnx')"], env=env).strip()
    assert pathlib.Path(model).is_relative_to(tmp / "venv"), model
    table = _run([qfab, "info", model, "--calib", calib, "--wbits", "4", "--abits", "4"], env=env)
    assert "Dense" in table and "gemm_3" in table and "i4" in table, table    # --wbits 4 was read


@pytest.mark.slow
@pytest.mark.verilator
def test_demo_runs_from_the_checkout_root(venv):
    """The README's main job, `qfab demo`, from the checkout root with the non-editable install."""
    _, qfab, env, tmp = venv
    out = _run([qfab, "demo", "--out", tmp / "demo"], env=env, timeout=1800)
    assert "bit-exact: every one of the 3600 outputs equals the reference" in out, out[-2000:]
    assert (tmp / "demo" / "build" / "manifest.json").is_file()
