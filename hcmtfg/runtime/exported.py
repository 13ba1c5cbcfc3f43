"""Inference steps kept as `jax.export`ed StableHLO beside the compilation cache.

The persistent compilation cache (`hcmtfg.runtime.compile_cache`) saves XLA's work,
but JAX must still trace the Flax modules in Python to find the cache key:
about a second per network on a 2-core CPU, paid by every process. With the
cache on, `Exported` traces a step once, serialises it with `jax.export`
into `<cache folder>/hcmtfg_exported/`, and later processes deserialise it
instead of tracing (its executable then comes from the compilation cache).

The variable shapes a module's config implies (`variable_shapes`, what
checkpoints are checked against) are kept there too, as JSON.

A file's name hashes everything the traced computation depends on: the step,
its static key (the module's config), the argument shapes and dtypes, the
compiler options, the platform, the jax / jaxlib / flax versions and the
source of the code that is traced (`hcmtfg/models/` and `TRACED_FILES`).
An unreadable file is traced again and replaced.
With the cache off the plain jitted function runs, as before.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import threading
from typing import Any, Callable

from absl import logging
import jax

from hcmtfg import atomic
from hcmtfg.models import winograd
from hcmtfg.runtime import compile_cache

SUBDIR = "hcmtfg_exported"
# Besides hcmtfg/models/: the library files whose code the exported steps trace.
TRACED_FILES = ("inference/chunked.py", "inference/engine.py",
                "runtime/exported.py")
# The library folder (hcmtfg/): the traced code is named relative to it.
_LIB = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def code_fingerprint() -> str:
  """sha256 of the traced code's source and the library versions."""
  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256(
      f"{jax.__version__}|{jaxlib.__version__}|{flax.__version__}".encode())
  files = sorted(glob.glob(os.path.join(_LIB, "models", "*.py"))) + [
      os.path.join(_LIB, name) for name in TRACED_FILES]
  for path in files:
    digest.update(os.path.relpath(path, _LIB).encode())
    with open(path, "rb") as f:
      digest.update(f.read())
  return digest.hexdigest()


def _signature(args: tuple[Any, ...]) -> str:
  leaves, treedef = jax.tree.flatten(args)
  specs = [(tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False)))
           for x in leaves]
  return f"{treedef}|{specs}"


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype,
                              weak_type=bool(getattr(x, "weak_type", False)))


class Exported:
  """A jitted step that, with the compilation cache on, runs from a stored
  `jax.export` of itself.

  Args:
    name: file-name prefix of the stored exports.
    fn: the step (a function of arrays / pytrees of arrays only).
    key: what else the computation depends on (e.g. the module's config).
    compiler_options: XLA options of its executable.
  """

  def __init__(self, name: str, fn: Callable[..., Any], key: str,
               compiler_options: dict[str, Any] | None = None):
    self.name, self.fn, self.key = name, fn, key
    self.compiler_options = compiler_options
    self._plain = jax.jit(fn, compiler_options=compiler_options)
    self._calls: dict[tuple[str, str], Callable[..., Any]] = {}
    self._lock = threading.Lock()

  def __call__(self, *args: Any) -> Any:
    folder = compile_cache.STATS.directory
    if folder is None:
      return self._plain(*args)
    signature = _signature(args)
    with self._lock:
      call = self._calls.get((folder, signature))
      if call is None:
        call = self._calls[(folder, signature)] = self._prepare(
            folder, signature, args)
    return call(*args)

  def path(self, folder: str, signature: str) -> str:
    """Where the export for these arguments is stored."""
    digest = hashlib.sha256("\n".join([
        self.name, self.key, signature, repr(sorted(
            (self.compiler_options or {}).items())), jax.default_backend(),
        code_fingerprint()]).encode()).hexdigest()[:40]
    return os.path.join(folder, SUBDIR, f"{self.name}-{digest}.jaxexport")

  def _prepare(self, folder: str, signature: str,
               args: tuple[Any, ...]) -> Callable[..., Any]:
    path = self.path(folder, signature)
    exported = None
    if os.path.isfile(path):
      try:
        with open(path, "rb") as f:
          exported = jax.export.deserialize(bytearray(f.read()))
      except Exception as e:  # pylint: disable=broad-except  (re-export)
        logging.warning("%s: unreadable (%s); tracing again", path, e)
    if exported is None:
      exported = jax.export.export(jax.jit(self.fn))(
          *jax.tree.map(_abstract, args))
      try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = atomic.temp_beside(path)
        with os.fdopen(fd, "wb") as f:
          f.write(exported.serialize())
        os.replace(tmp, path)
      except OSError as e:
        logging.warning("cannot store %s (%s)", path, e)
    return jax.jit(exported.call, compiler_options=self.compiler_options)


_BY_MODULE: dict[tuple[str, Any], Exported] = {}
_BY_MODULE_LOCK = threading.Lock()


def module_step(name: str, fn: Callable[..., Any], module: Any,
                compiler_options: dict[str, Any] | None = None) -> Exported:
  """The Exported of `fn(module, *arrays)` for one Flax module (one per
  process, keyed by the module's config)."""
  with _BY_MODULE_LOCK:
    step = _BY_MODULE.get((name, module))
    if step is None:
      key = (f"{type(module).__name__}"
             f"{json.dumps(module.to_config(), sort_keys=True)}")
      step = _BY_MODULE[(name, module)] = Exported(
          name, functools.partial(fn, module), key, compiler_options)
    return step


def with_transformed_kernels(module: Any, variables: dict[str, Any]
                             ) -> dict[str, Any]:
  """`winograd.with_transformed_kernels` on the module's dummy inputs, from
  a stored export when the compilation cache is on."""
  if compile_cache.STATS.directory is None:
    return winograd.with_transformed_kernels(module, variables,
                                             *module.dummy_inputs(),
                                             train=False)
  fn = lambda m, v: winograd.transforms_of(m, *m.dummy_inputs(),
                                           train=False)(v)
  transforms = module_step("kernel_transforms", fn, module)(dict(variables))
  out = dict(variables)
  if transforms:
    out[winograd.TRANSFORMED] = transforms
  return out


def variable_shapes(module: Any) -> dict[str, jax.ShapeDtypeStruct]:
  """{'params/.../kernel': shape and dtype} of `module.init`'s variables.

  Traced once (jax.eval_shape) and stored beside the compilation cache when
  it is on.
  """
  from flax import traverse_util  # pylint: disable=g-import-not-at-top

  def trace():
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return traverse_util.flatten_dict(jax.eval_shape(
        lambda: module.init(rngs, *module.dummy_inputs(), train=False)),
        sep="/")

  folder = compile_cache.STATS.directory
  if folder is None:
    return trace()
  key = f"{type(module).__name__}{json.dumps(module.to_config(), sort_keys=True)}"
  digest = hashlib.sha256(f"{key}\n{jax.default_backend()}\n"
                          f"{code_fingerprint()}".encode()).hexdigest()[:40]
  path = os.path.join(folder, SUBDIR, f"shapes-{digest}.json")
  try:
    with open(path) as f:
      return {name: jax.ShapeDtypeStruct(tuple(shape), dtype)
              for name, (shape, dtype) in json.load(f).items()}
  except (OSError, ValueError, TypeError):
    pass
  shapes = trace()
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = atomic.temp_beside(path)
    with os.fdopen(fd, "w") as f:
      json.dump({name: [list(x.shape), str(x.dtype)]
                 for name, x in shapes.items()}, f)
    os.replace(tmp, path)
  except OSError as e:
    logging.warning("cannot store %s (%s)", path, e)
  return shapes
