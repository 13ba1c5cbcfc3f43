"""Imports point one way: the library never up, entry points never sideways.

Each row of RULES is (folder, forbidden): no module under the folder may import
a module whose dotted name is, or lies under, one of the forbidden names, at
the top of the file or inside a function (lazy imports count, and so do
relative imports and `importlib.import_module('...')` with a literal name).
The sources are parsed with `ast`, never imported. A new top-level folder gets
a row of its own.

benchmarks/ (speed benchmarks, the release's PyTorch declaration, the round
trip) builds on the library and runs the launch/ commands as subprocesses, as a
user would; nothing that ships to users imports it. tests/ may import anything.

Inside the library, LAYERS states what each subpackage of hcmtfg/ may import
(the data flow's directions), and the root modules import no subpackage.
"""

import ast
import pathlib
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

RULES = (
    # The library: datasets, entry points, benchmarks and tests build on it,
    # not it on them.
    ('hcmtfg', ('data_pipelines', 'launch', 'tests', 'benchmarks')),
    # The dataset builders use the library, never the entry points or tests.
    ('data_pipelines', ('launch', 'tests', 'benchmarks')),
    # Entry points share code through the library, never through each other.
    ('launch', ('launch', 'tests', 'benchmarks')),
    # Benchmarks and release tooling: the library, the configs, the dataset
    # builders and each other.
    ('benchmarks', ('launch', 'tests')),
    # Experiment configs are plain data.
    ('configs', ('launch', 'tests', 'benchmarks')),
)
FOLDERS = [folder for folder, _ in RULES]

# Inside the library: each subpackage of hcmtfg/ and what of the library it
# may import, besides itself and the root modules. The directions follow the
# data flow (media -> features -> data -> train; weights -> inference ->
# evaluation, server); a new subpackage needs a row, or the test fails.
LAYERS = {
    'models': (),  # the networks: pure Flax, nothing else of ours
    'media': (),
    'runtime': ('models',),  # exported steps hold the Winograd transforms
    'features': ('media',),
    'data': ('features', 'runtime'),
    'weights': ('models', 'features', 'runtime'),
    'train': ('models', 'runtime', 'features', 'data', 'weights'),
    'inference': ('models', 'runtime', 'media', 'features', 'weights'),
    'evaluation': ('models', 'runtime', 'media', 'features', 'data', 'weights',
                   'inference', 'train'),
    'server': ('runtime', 'media', 'features', 'inference'),
}
# The modules at the library's root, which every subpackage may use; they
# import none of the subpackages. Kept few on purpose.
ROOT_MODULES = ('__init__', 'atomic', 'errors', 'paths')
MAX_ROOT_MODULES = 8
SUBPACKAGE_RULES = tuple(
    (f'hcmtfg/{package}', tuple(f'hcmtfg.{other}' for other in sorted(LAYERS)
                                if other != package and other not in allowed))
    for package, allowed in LAYERS.items())


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
    module = relative[:-len('.py')].replace('/', '.')
    found += [f'{relative}:{line} imports {name}' for line, name in
              forbidden_imports(path.read_text(encoding='utf-8'), module,
                                forbidden)]
  return found


@pytest.mark.parametrize('folder, forbidden', RULES, ids=FOLDERS)
def test_imports_point_one_way(folder, forbidden):
  assert len(list((REPO / folder).rglob('*.py'))) > 3, folder  # not vacuous
  assert violations(folder, forbidden) == []


def test_every_top_level_package_has_a_rule():
  packages = {p.parent.name for p in REPO.glob('*/__init__.py')}
  assert packages == set(FOLDERS)


@pytest.mark.parametrize('folder, forbidden', SUBPACKAGE_RULES,
                         ids=[f for f, _ in SUBPACKAGE_RULES])
def test_library_subpackages_import_along_the_data_flow(folder, forbidden):
  assert list((REPO / folder).glob('*.py')), folder  # not vacuous
  assert violations(folder, forbidden) == []


def test_root_modules_are_few_and_import_no_subpackage():
  root = sorted(p.stem for p in (REPO / 'hcmtfg').glob('*.py'))
  assert root == sorted(ROOT_MODULES) and len(root) <= MAX_ROOT_MODULES
  everything = tuple(f'hcmtfg.{package}' for package in LAYERS)
  for name in root:
    path = REPO / 'hcmtfg' / f'{name}.py'
    assert forbidden_imports(path.read_text(encoding='utf-8'),
                             f'hcmtfg.{name}', everything) == [], name


def test_every_library_subpackage_has_a_layer_and_a_docstring():
  packages = {p.parent.name for p in (REPO / 'hcmtfg').glob('*/__init__.py')}
  assert packages == set(LAYERS)
  for package in packages:
    doc = ast.get_docstring(ast.parse(
        (REPO / 'hcmtfg' / package / '__init__.py').read_text(encoding='utf-8')))
    assert doc and len(doc.split()) >= 10, f'hcmtfg/{package} needs a docstring'


def test_a_wrong_way_import_in_the_library_is_caught(tmp_path):
  """Planted: features reaching up into inference, runtime into train, and a
  root module into a subpackage; the allowed directions pass."""
  rules = dict(SUBPACKAGE_RULES)
  for package in ('features', 'runtime', 'inference'):
    (tmp_path / 'hcmtfg' / package).mkdir(parents=True)
  (tmp_path / 'hcmtfg' / 'features' / 'bad.py').write_text(
      'from hcmtfg.media import video\n'
      'def f():\n  from hcmtfg.inference import engine\n  return engine\n')
  (tmp_path / 'hcmtfg' / 'runtime' / 'bad.py').write_text(
      'import hcmtfg.train.trainer\nfrom hcmtfg.models import winograd\n')
  (tmp_path / 'hcmtfg' / 'inference' / 'ok.py').write_text(
      'from hcmtfg.weights import checkpoint_io\nfrom hcmtfg import errors\n'
      'from . import engine\n')
  assert violations('hcmtfg/features', rules['hcmtfg/features'],
                    root=tmp_path) == [
                        'hcmtfg/features/bad.py:3 imports hcmtfg.inference.engine']
  assert violations('hcmtfg/runtime', rules['hcmtfg/runtime'],
                    root=tmp_path) == [
                        'hcmtfg/runtime/bad.py:1 imports hcmtfg.train.trainer']
  assert violations('hcmtfg/inference', rules['hcmtfg/inference'],
                    root=tmp_path) == []
  # Upward through a relative import from a deeper module is caught too.
  assert forbidden_imports('from ..train import trainer\n',
                           'hcmtfg.inference.engine',
                           rules['hcmtfg/inference']) == [
                               (1, 'hcmtfg.train.trainer')]


@pytest.mark.parametrize('folder, forbidden', RULES, ids=FOLDERS)
def test_each_rule_catches_a_violation(tmp_path, folder, forbidden):
  """A module under `folder` importing each forbidden name, at the top and
  lazily, is reported, and the folder's allowed imports are not."""
  lines = ['import hcmtfg.paths', 'from configs import common']
  for name in forbidden:
    lines += [f'import {name}.x', '', 'def f():',
              f'  from {name} import y', '  return y']
  (tmp_path / folder / 'sub').mkdir(parents=True)
  (tmp_path / folder / 'sub' / 'bad.py').write_text('\n'.join(lines) + '\n')
  found = violations(folder, forbidden, root=tmp_path)
  want = []
  for i, name in enumerate(forbidden):
    first = 3 + 5 * i
    want += [f'{folder}/sub/bad.py:{first} imports {name}.x',
             f'{folder}/sub/bad.py:{first + 3} imports {name}.y']
  assert sorted(found) == sorted(want)


def test_the_check_finds_lazy_relative_and_dynamic_imports(tmp_path):
  source = textwrap.dedent('''\
      import importlib
      import launcher  # another package whose name only starts alike
      from hcmtfg.train import trainer


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
  assert forbidden_imports('from .models import at_net\n', 'hcmtfg.inference.generate',
                           library) == []
  # benchmarks/ may import itself, relatively or not.
  benchmarks = dict(RULES)['benchmarks']
  assert forbidden_imports(
      'from . import benchmark_setup\nfrom benchmarks import release_torch\n',
      'benchmarks.benchmark', benchmarks) == []
  # The same through the file walk: a library module with a lazy import.
  (tmp_path / 'hcmtfg' / 'models').mkdir(parents=True)
  (tmp_path / 'hcmtfg' / 'models' / 'bad.py').write_text(source)
  assert violations('hcmtfg', library, root=tmp_path) == [
      'hcmtfg/models/bad.py:7 imports data_pipelines.build',
      'hcmtfg/models/bad.py:12 imports tests.mutations',
      'hcmtfg/models/bad.py:13 imports launch.generate']
