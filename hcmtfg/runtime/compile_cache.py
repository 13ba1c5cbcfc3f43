"""JAX's persistent compilation cache: compile once per machine, not per run.

Every entry point (train, evaluate, generate, stream, serve) calls `enable`
before its first jitted call. XLA then writes each executable it compiles to
a folder, and a later process that traces the same function with the same
shapes, options and jax/jaxlib version loads it from there instead of
compiling it again. Generation runs in chunks of a fixed length
(`hcmtfg.inference.generate.CHUNK_FRAMES`), so any length of speech reuses the same few
executables.

Where (first that applies):
  1. the entry point's `--compile_cache=DIR` flag (`off` disables);
  2. the environment variable HCMTFG_COMPILE_CACHE (same values);
  3. `$XDG_CACHE_HOME/hcmtfg/jax`, else `~/.cache/hcmtfg/jax`.

Every executable is kept (no minimum compile time or size), so a second run
compiles nothing, not even the small eager operations of loading. On CPU the
entries are small (the generation path of the full-size networks: about
0.5 MB of executables, as much again for `hcmtfg.runtime.exported`'s stored steps)
and JAX checks that the CPU loading an entry has the features
it was compiled for, so a cache in a home folder shared by different
machines is safe (an incompatible entry is compiled again). The folder may
be deleted at any time; it is never read for anything but executables.

`STATS` counts, per process, executables loaded from the cache and
executables compiled (with their compile time), from JAX's monitoring
events; entry points log `STATS.summary()` at the end.
"""

from __future__ import annotations

import dataclasses
import os
import threading

from absl import flags
from absl import logging
import jax

ENV_VAR = "HCMTFG_COMPILE_CACHE"
DISABLED = frozenset({"off", "none", "no", "false", "0", "disabled"})

# JAX's monitoring events (jax._src.dispatch / jax._src.compiler). The compile
# event spans compile_or_get_cached, so it also fires for cache hits.
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_SAVED_EVENT = "/jax/compilation_cache/compile_time_saved_sec"


def define_flag(flag_values: flags.FlagValues = flags.FLAGS
                ) -> flags.FlagHolder:
  """The `--compile_cache` flag of an entry point (pass its value to enable).

  Defined once per FlagValues: a second entry point imported into the same
  process (the demo, tests) gets the same flag.
  """
  if "compile_cache" in flag_values:
    return flags.FlagHolder(flag_values, flag_values["compile_cache"])
  return flags.DEFINE_string(
      "compile_cache", None, "Folder of the persistent compilation cache "
      f"('off' disables it). Default: ${ENV_VAR}, else "
      "$XDG_CACHE_HOME/hcmtfg/jax or ~/.cache/hcmtfg/jax.",
      flag_values=flag_values)


def default_dir() -> str:
  """$XDG_CACHE_HOME/hcmtfg/jax, or ~/.cache/hcmtfg/jax."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "hcmtfg", "jax")


def resolve(value: str | None = None) -> str | None:
  """The cache folder for a flag value (None: not given), or None when off."""
  if value is None:
    value = os.environ.get(ENV_VAR)
  if value is None or not value.strip():
    return os.path.abspath(default_dir())
  if value.strip().lower() in DISABLED:
    return None
  return os.path.abspath(os.path.expanduser(value.strip()))


def enable(value: str | None = None) -> str | None:
  """Turns the persistent cache on (or off) for this process.

  Call before the first jitted call; calling again switches folders. A folder
  that cannot be created or written disables the cache with a warning (a
  cache is never a reason for a job to fail).

  Args:
    value: the `--compile_cache` flag's value (None: not given).

  Returns:
    The folder in use, or None when the cache is off.
  """
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  STATS.install()
  path = resolve(value)
  if path is not None:
    try:
      os.makedirs(path, exist_ok=True)
      if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError("not writable")
    except OSError as e:
      logging.warning("compilation cache disabled: cannot use %s (%s)", path, e)
      path = None
  compilation_cache.reset_cache()  # takes effect even after earlier compiles
  if path is None:
    jax.config.update("jax_enable_compilation_cache", False)
    logging.info("persistent compilation cache: off")
  else:
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    logging.info("persistent compilation cache: %s", path)
  STATS.directory = path
  return path


@dataclasses.dataclass
class Stats:
  """Executables this process loaded from the cache or compiled.

  Attributes:
    requests: executables JAX needed (compiled or loaded).
    loaded: of those, loaded from the persistent cache.
    request_seconds: time spent getting them (compiling or loading).
    saved_seconds: compile time the loaded ones would have cost.
    directory: the cache folder (None: off or not enabled).
  """
  requests: int = 0
  loaded: int = 0
  request_seconds: float = 0.0
  saved_seconds: float = 0.0
  directory: str | None = None

  def __post_init__(self):
    self._lock = threading.Lock()
    self._installed = False

  @property
  def compiled(self) -> int:
    """Executables compiled by XLA in this process."""
    return self.requests - self.loaded

  def install(self) -> None:
    """Registers the JAX monitoring listeners (once per process)."""
    with self._lock:
      if self._installed:
        return
      self._installed = True
    jax.monitoring.register_event_listener(self._on_event)
    jax.monitoring.register_event_duration_secs_listener(self._on_duration)

  def _on_event(self, event: str, **_) -> None:
    if event == _HIT_EVENT:
      with self._lock:
        self.loaded += 1

  def _on_duration(self, event: str, seconds: float, **_) -> None:
    with self._lock:
      if event == _COMPILE_EVENT:
        self.requests += 1
        self.request_seconds += seconds
      elif event == _SAVED_EVENT:
        self.saved_seconds += max(seconds, 0.0)

  def snapshot(self) -> dict[str, float | int | str | None]:
    """The counters as a dict (for logs and JSON)."""
    with self._lock:
      return {"compiled": self.compiled, "loaded": self.loaded,
              "seconds": round(self.request_seconds, 3),
              "saved_seconds": round(self.saved_seconds, 3),
              "directory": self.directory}

  def summary(self) -> str:
    """One line: 'compilation cache DIR: N loaded, M compiled (S s)'."""
    s = self.snapshot()
    where = s["directory"] or "off"
    return (f"compilation cache ({where}): {s['loaded']} executables loaded, "
            f"{s['compiled']} compiled; {s['seconds']:.1f} s getting them")


STATS = Stats()
