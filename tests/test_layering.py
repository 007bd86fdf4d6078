"""The direction of knowledge between the top folders that pyproject.toml maps to ``qfab.*``.

base/ imports only the standard library; hw/ only Amaranth, the standard library and qfab.base;
the compiler imports neither sim/ nor boards/, and only compiler/lowering.py knows Amaranth and
the hardware library; sim/ does not import boards/; only cli/ imports the CLI (qfab.cli, qfab.flow,
qfab.doctor and whatever else lives in cli/). Every relative import is resolved to the module it
names, so ``from ... import x`` obeys the same rules, and none may leave its top folder.
"""

import ast
import pathlib
import re
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE_DIR = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
FOLDERS = sorted({folder.split("/")[0] for folder in PACKAGE_DIR.values()})
STDLIB = set(sys.stdlib_module_names)
CLI_MODULES = ("qfab.cli", "qfab.flow", "qfab.doctor")
ABOVE = "<above qfab>"


def _within(name, package):
    return name == package or name.startswith(package + ".")


def _module_of(path):
    """The dotted module name of a file under one of the mapped folders."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    best = max((folder for folder in PACKAGE_DIR.values()
                if tuple(folder.split("/")) == parts[:len(folder.split("/"))]),
               key=lambda folder: len(folder.split("/")))
    package = next(name for name, folder in PACKAGE_DIR.items() if folder == best)
    return ".".join([package, *parts[len(best.split("/")):]])


def _folder_of(module):
    """The top folder that holds ``module`` (None: not a qfab module)."""
    keys = [name for name in PACKAGE_DIR if _within(module, name)]
    return PACKAGE_DIR[max(keys, key=len)].split("/")[0] if keys else None


def _resolve(module, is_package, level, name):
    """The absolute name of ``from <level dots><name> import ...`` in ``module``; None when the
    dots climb above the top-level package."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 >= len(parts):
        return None
    base = parts[:len(parts) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _imports(folder):
    """``(path, target, relative)`` for every import in ``folder``: ``import a.b`` names ``a.b``;
    ``from m import x`` names ``m.x`` (a submodule or a member of ``m``); relative imports are
    resolved against the file's own module (``ABOVE`` when they climb above ``qfab``)."""
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        module = _module_of(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield path, alias.name, False
            elif isinstance(node, ast.ImportFrom):
                source = node.module
                if node.level:
                    source = _resolve(module, path.name == "__init__.py", node.level, node.module) or ABOVE
                for alias in node.names:
                    yield path, f"{source}.{alias.name}", bool(node.level)


def _rel(path):
    return str(path.relative_to(ROOT))


def test_the_folders_are_mapped():
    assert {"base", "hw", "compiler", "sim", "boards", "cli"} <= set(FOLDERS)
    assert _module_of(ROOT / "compiler" / "train" / "qat.py") == "qfab.compiler.train.qat"
    assert _module_of(ROOT / "cli" / "__init__.py") == "qfab"
    assert _folder_of("qfab.datasets") == "cli" and _folder_of("qfab.hw.mac.MacArray") == "hw"


@pytest.mark.parametrize("module, is_package, level, name, want", [
    ("qfab.compiler.train.qat", False, 1, "net", "qfab.compiler.train.net"),
    ("qfab.compiler.train.qat", False, 2, "intops", "qfab.compiler.intops"),
    ("qfab.compiler.train.qat", False, 3, None, "qfab"),             # from ... import datasets
    ("qfab.compiler.train", True, 1, "qat", "qfab.compiler.train.qat"),
    ("qfab.hw.mac", False, 3, None, None),                           # above qfab
])
def test_relative_imports_resolve(module, is_package, level, name, want):
    assert _resolve(module, is_package, level, name) == want


@pytest.mark.parametrize("folder", FOLDERS)
def test_relative_imports_stay_in_their_top_folder(folder):
    bad = [(_rel(p), m) for p, m, relative in _imports(folder)
           if relative and _folder_of(m) != folder]
    assert not bad, f"relative imports leaving {folder}/: {bad}"


def test_base_imports_only_the_standard_library():
    bad = [(_rel(p), m) for p, m, _ in _imports("base")
           if m.split(".")[0] not in STDLIB and not _within(m, "qfab.base")]
    assert not bad, f"base/ imports {bad}"


def test_hw_imports_only_amaranth_stdlib_and_base():
    allowed = STDLIB | {"amaranth"}
    bad = [(_rel(p), m) for p, m, _ in _imports("hw")
           if m.split(".")[0] not in allowed and not _within(m, "qfab.base") and not _within(m, "qfab.hw")]
    assert not bad, f"hw/ imports {bad}"


def test_compiler_imports_no_simulation_or_boards_and_only_lowering_knows_hardware():
    imports = [(p, m) for p, m, _ in _imports("compiler")]
    bad = [(_rel(p), m) for p, m in imports
           if _folder_of(m) in ("sim", "boards", "cli") or m.split(".")[0] == "cocotb"
           or ((m.split(".")[0] == "amaranth" or _within(m, "qfab.hw")) and p.name != "lowering.py")]
    assert not bad, f"compiler/ imports {bad}"
    assert any(p.name == "lowering.py" and _within(m, "qfab.hw") for p, m in imports)


@pytest.mark.parametrize("folder", [f for f in FOLDERS if f != "cli"])
def test_only_the_cli_imports_the_cli(folder):
    bad = [(_rel(p), m) for p, m, _ in _imports(folder)
           if _folder_of(m) != folder and (_folder_of(m) == "cli" or any(_within(m, c) for c in CLI_MODULES))]
    assert not bad, f"{folder}/ imports the CLI: {bad}"


def test_sim_does_not_import_boards():
    bad = [(_rel(p), m) for p, m, _ in _imports("sim") if _folder_of(m) == "boards"]
    assert not bad, f"sim/ imports {bad}"


def test_docstring_names_only_files_that_exist():
    doc = __doc__
    paths = set(re.findall(r"[\w./-]+\.(?:py|md|toml)\b", doc)) | set(re.findall(r"\b(\w+)/", doc))
    assert paths, "the docstring names no file"
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"the docstring names files that are not in the repository: {missing}"


def test_the_board_host_runtime_needs_no_amaranth():
    """qfab.boards.host (protocol codec, driver) imports no Amaranth and no gateware, not even
    through another module: a host that only talks to a board needs neither."""
    import subprocess
    bad = [(_rel(p), m) for p, m, _ in _imports("boards/host")
           if m.split(".")[0] in ("amaranth", "amaranth_boards", "cocotb")
           or (_folder_of(m) is not None and not _within(m, "qfab.boards.host") and not _within(m, "qfab.base"))]
    assert not bad, f"boards/host/ imports {bad}"
    code = "import sys, qfab.boards.host; print(sorted(m for m in sys.modules if m.startswith('amaranth')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
