"""The shape of the package: layers that import only downwards, and no import hidden inside a function."""

import ast
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src", "sgu_llm")
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint(src_parent: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": src_parent}
    return subprocess.run(
        [LINT, "--config", os.path.join(ROOT, "pyproject.toml"), "--no-cache"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )


def test_layer_contracts_hold_and_catch_an_upward_import(tmp_path):
    kept = lint(os.path.join(ROOT, "src"))
    assert kept.returncode == 0, kept.stdout[-2000:]
    assert "Contracts: 2 kept, 0 broken." in kept.stdout
    # The same tree with one deliberate upward import (the bottom layer reaching the experiments) fails.
    copy = tmp_path / "src"
    shutil.copytree(SRC, copy / "sgu_llm", ignore=shutil.ignore_patterns("__pycache__", "shipped"))
    files = copy / "sgu_llm" / "core" / "files.py"
    files.write_text(files.read_text() + "\nfrom sgu_llm.experiments import run  # noqa: E402,F401\n")
    broken = lint(str(copy))
    assert broken.returncode != 0
    assert "sgu_llm.core.files -> sgu_llm.experiments.run" in broken.stdout


def test_no_module_imports_the_package_inside_a_function():
    """Every import of sgu_llm's own modules is at a module's top (the CLI and the lazy __init__ use importlib)."""
    hidden = []
    for folder, _, names in os.walk(SRC):
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            tree = ast.parse(open(path).read())
            for func in ast.walk(tree):
                if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(func):
                    module = node.module if isinstance(node, ast.ImportFrom) else None
                    names_ = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                    if (module or "").startswith("sgu_llm") or any(n.startswith("sgu_llm") for n in names_):
                        hidden.append(f"{os.path.relpath(path, SRC)}:{node.lineno} in {func.name}()")
    assert hidden == []
