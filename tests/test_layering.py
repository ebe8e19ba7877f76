"""The package's layers (docs: DESIGN.md, "library pieces below, experiments as thin scripts on
top"): no module outside `lotto/experiments` and `lotto/cli` imports `lotto.experiments` or
`lotto.cli`, at module level or inside a function (lazy imports count: they are the same
dependency, only later)."""

from __future__ import annotations

import ast
from pathlib import Path

import lotto

TOP = ("lotto.experiments", "lotto.cli")
ALLOWED = ("lotto/experiments/", "lotto/cli/", "lotto/__main__.py")  # the layers on top, the entry


def imported(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, module) of every import in the file at `path` (a module of `package`): `import a.b`,
    `from a import b` (as a and a.b), relative imports resolved, and
    `importlib.import_module("a.b")` with a constant name."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", None)) == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def upward_imports(root: Path) -> list[str]:
    """'file:line imports module' for each import of a top layer from below it, under `root`
    (the folder holding the `lotto` package)."""
    bad = []
    for path in sorted((root / "lotto").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(ALLOWED):
            continue
        parts = rel[: -len(".py")].split("/")
        package = ".".join(parts[:-1])  # a module's package; an __init__'s is its own
        for line, module in imported(path, package):
            if any(module == t or module.startswith(t + ".") for t in TOP):
                bad.append(f"{rel}:{line} imports {module}")
    return bad


def test_library_modules_do_not_import_the_experiments_or_the_cli():
    root = Path(lotto.__file__).resolve().parent.parent
    assert upward_imports(root) == []


def test_the_check_sees_every_form_of_an_upward_import(tmp_path):
    lib = tmp_path / "lotto" / "search"
    lib.mkdir(parents=True)
    (tmp_path / "lotto" / "experiments").mkdir()
    (tmp_path / "lotto" / "experiments" / "search.py").write_text(
        "from lotto.search import x\n")  # the top layer may import below it
    (lib / "a.py").write_text("import lotto.experiments.common\n")
    (lib / "b.py").write_text("def f():\n    from lotto.experiments.proxy import train_spec\n")
    (lib / "c.py").write_text("from lotto import cli\n")
    (lib / "d.py").write_text("from ..experiments import common\n")
    (lib / "e.py").write_text("import importlib\nm = importlib.import_module('lotto.cli.app')\n")
    (lib / "f.py").write_text("from lotto.experimental import ok\nimport lotto.clients\n")
    (lib / "__init__.py").write_text("from . import a\n")
    assert upward_imports(tmp_path) == [
        "lotto/search/a.py:1 imports lotto.experiments.common",
        "lotto/search/b.py:2 imports lotto.experiments.proxy",
        "lotto/search/b.py:2 imports lotto.experiments.proxy.train_spec",
        "lotto/search/c.py:1 imports lotto.cli",
        "lotto/search/d.py:1 imports lotto.experiments",
        "lotto/search/d.py:1 imports lotto.experiments.common",
        "lotto/search/e.py:2 imports lotto.cli.app",
    ]
