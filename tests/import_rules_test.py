"""Imports point one way: the library never up, entry points never sideways.

Each row of RULES is (folder, forbidden): no module under the folder may import
a module whose dotted name is, or lies under, one of the forbidden names, at
the top of the file or inside a function (lazy imports count, and so do
relative imports and `importlib.import_module('...')` with a literal name).
The sources are parsed with `ast`, never imported. A new top-level folder gets
a row of its own.
"""

import ast
import pathlib
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

RULES = (
    # The library: datasets, entry points and tests build on it, not it on them.
    ('hcmtfg', ('data_pipelines', 'launch', 'tests')),
    # The dataset builders use the library, never the entry points or tests.
    ('data_pipelines', ('launch', 'tests')),
    # Entry points share code through the library, never through each other.
    ('launch', ('launch', 'tests')),
)

# Benchmark and release tooling that the other part of issue 16 moves out of
# launch/ into benchmarks/ (it imports launch/ and tests/ modules until then).
# Remove this once that move is merged.
PENDING_MOVE = ('launch/benchmark', 'launch/release_')


def _literal_import(node: ast.Call) -> str | None:
  """The name of `importlib.import_module('x')` / `__import__('x')`, if so."""
  func = node.func
  name = func.attr if isinstance(func, ast.Attribute) else getattr(
      func, 'id', None)
  if name not in ('import_module', '__import__') or not node.args:
    return None
  first = node.args[0]
  if isinstance(first, ast.Constant) and isinstance(first.value, str):
    return first.value
  return None


def imported_names(source: str, module: str) -> list[tuple[int, str]]:
  """(line, dotted name) of everything `source` imports, wherever it does.

  `from a.b import c` gives 'a.b.c' (c may be a module); relative imports are
  resolved against `module`, the dotted name of the source's file
  ('launch.demo'; a package's own file is 'pkg.__init__').
  """
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      parts = [node.module] if node.module else []
      if node.level:
        parts = module.split('.')[:-node.level] + parts
      base = '.'.join(parts)
      found += [(node.lineno, f'{base}.{alias.name}') for alias in node.names]
    elif isinstance(node, ast.Call) and (name := _literal_import(node)):
      found.append((node.lineno, name))
  return sorted(found)


def forbidden_imports(source: str, module: str,
                      forbidden: tuple[str, ...]) -> list[tuple[int, str]]:
  """The imports of `source` that name a forbidden module or one under it."""
  return [(line, name) for line, name in imported_names(source, module)
          if any(name == f or name.startswith(f + '.') for f in forbidden)]


def violations(folder: str, forbidden: tuple[str, ...],
               root: pathlib.Path = REPO) -> list[str]:
  """'path:line imports name' for every forbidden import under `folder`."""
  found = []
  for path in sorted((root / folder).rglob('*.py')):
    relative = path.relative_to(root).as_posix()
    if relative.startswith(PENDING_MOVE):
      continue
    module = relative[:-len('.py')].replace('/', '.')
    found += [f'{relative}:{line} imports {name}' for line, name in
              forbidden_imports(path.read_text(encoding='utf-8'), module,
                                forbidden)]
  return found


@pytest.mark.parametrize('folder, forbidden', RULES)
def test_imports_point_one_way(folder, forbidden):
  assert len(list((REPO / folder).rglob('*.py'))) > 3, folder  # not vacuous
  assert violations(folder, forbidden) == []


def test_the_check_finds_lazy_relative_and_dynamic_imports(tmp_path):
  source = textwrap.dedent('''\
      import importlib
      import launcher  # another package whose name only starts alike
      from hcmtfg import training


      def build():
        from data_pipelines import build as b  # a lazy import
        return b


      def helper():
        import tests.mutations
        return importlib.import_module('launch.generate')
      ''')
  library = dict(RULES)['hcmtfg']
  assert forbidden_imports(source, 'hcmtfg.example', library) == [
      (7, 'data_pipelines.build'), (12, 'tests.mutations'),
      (13, 'launch.generate')]
  entry_points = dict(RULES)['launch']
  assert forbidden_imports('from . import evaluate\n', 'launch.demo',
                           entry_points) == [(1, 'launch.evaluate')]
  assert forbidden_imports('from .models import at_net\n', 'hcmtfg.generate',
                           library) == []
  # The same through the file walk: a library module with a lazy import.
  (tmp_path / 'hcmtfg' / 'models').mkdir(parents=True)
  (tmp_path / 'hcmtfg' / 'models' / 'bad.py').write_text(source)
  assert violations('hcmtfg', library, root=tmp_path) == [
      'hcmtfg/models/bad.py:7 imports data_pipelines.build',
      'hcmtfg/models/bad.py:12 imports tests.mutations',
      'hcmtfg/models/bad.py:13 imports launch.generate']
