"""The import direction of benchmarks/, checked by parsing every module's imports.

benchmarks/ (speed benchmarks, the release's PyTorch declaration, the round
trip) sits beside the entry points: it may import the library (hcmtfg), the
configs, the dataset builders and itself, never launch/ or tests/ (it runs the
launch/ commands as subprocesses, as a user would). Nothing that ships to users
(hcmtfg, launch, data_pipelines, configs) imports benchmarks/; tests may.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS_MUST_NOT_IMPORT = ("launch", "tests")
MUST_NOT_IMPORT_BENCHMARKS = ("hcmtfg", "launch", "data_pipelines", "configs")


def imported_packages(path: pathlib.Path,
                      root: pathlib.Path = REPO_ROOT) -> set[tuple[str, int]]:
  """(top-level package, line) of every import in a file, lazy ones included.

  A relative import counts as one of the file's own top-level package (its
  first folder under `root`).
  """
  package = path.relative_to(root).parts[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Import):
      found.update((alias.name.split(".")[0], node.lineno)
                   for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      top = package if node.level else (node.module or "").split(".")[0]
      found.add((top, node.lineno))
  return found


def violations(folders: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
  """'file:line imports package' for each forbidden import under `folders`."""
  found = []
  for folder in folders:
    for path in sorted((REPO_ROOT / folder).rglob("*.py")):
      for top, line in sorted(imported_packages(path)):
        if top in forbidden:
          found.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {top}")
  return found


def test_benchmarks_import_neither_launch_nor_tests():
  assert violations(("benchmarks",), BENCHMARKS_MUST_NOT_IMPORT) == []


def test_nothing_users_run_imports_benchmarks():
  assert violations(MUST_NOT_IMPORT_BENCHMARKS, ("benchmarks",)) == []


@pytest.mark.parametrize("source, package", [
    ("import launch.train\n", "launch"),
    ("from tests import conftest\n", "tests"),
    ("def f():\n  from launch.generate import main\n", "launch"),
    ("from . import benchmark_setup\n", "benchmarks"),
])
def test_the_parser_sees_every_form(tmp_path, source, package):
  """Plain, from-, lazy and relative imports are all found."""
  path = tmp_path / "benchmarks" / "x.py"
  path.parent.mkdir()
  path.write_text(source)
  assert package in {top for top, _ in imported_packages(path, tmp_path)}
