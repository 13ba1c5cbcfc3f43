"""Train state, jitted step helpers and the training loop of both stages.

`TrainState` holds everything a resumed run needs, as one pytree: the step, the
RNG key and, per network, its parameters, BatchNorm statistics and optimiser
state. AT-net training uses `g` only (`d` is None); VG-net training uses `g`
(the generator) and `d` (the discriminator). It holds arrays only; modules and
optimisers are rebuilt from the config, which the jitted step functions take as
a static (hashable, frozen) argument.

`run_train_loop` / `fit` are the loop both trainers share: restore or
initialise, feed host-local numpy batches as global sharded arrays, check every
metric for NaN/Inf, checkpoint with the input iterator's position, evaluate,
and save-and-exit on preemption.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hcmtfg import checkpointing
from hcmtfg import faults
from hcmtfg import preemption as preemption_lib
from hcmtfg import sharding

PyTree = Any
HostBatch = Mapping[str, np.ndarray]
MetricsSink = Callable[[int, dict[str, float]], None]


def learning_rate_schedule(optim_config: ml_collections.ConfigDict
                           ) -> optax.Schedule | float:
  """The learning rate: constant (the release), or a cosine decay.

  Args:
    optim_config: `learning_rate`; optionally `decay_steps` (0 or absent:
      constant) and `final_learning_rate` (where the cosine ends, reached at
      step decay_steps and held after it).
  """
  decay_steps = int(optim_config.get('decay_steps', 0) or 0)
  if decay_steps <= 0:
    return optim_config.learning_rate
  return optax.cosine_decay_schedule(
      optim_config.learning_rate, decay_steps,
      alpha=optim_config.final_learning_rate / optim_config.learning_rate)


def make_optimizer(optim_config: ml_collections.ConfigDict
                   ) -> optax.GradientTransformation:
  """Adam as the release trains both stages.

  Args:
    optim_config: fields `learning_rate` (2e-4), `b1` (0.5), `b2` (0.999),
      and the optional schedule fields of `learning_rate_schedule`.

  Returns:
    optax.adam with those settings (eps 1e-8, as torch.optim.Adam).
  """
  return optax.adam(learning_rate_schedule(optim_config), b1=optim_config.b1,
                    b2=optim_config.b2)


@flax.struct.dataclass
class NetState:
  """One network's arrays: parameters, BatchNorm statistics, optimiser state.

  The module and the optimiser are not stored: the step functions rebuild them
  from the (static) config, so the state is a plain pytree of arrays.
  """
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState

  @classmethod
  def create(cls, tx: optax.GradientTransformation,
             variables: PyTree) -> NetState:
    """Builds the state from `module.init(...)` variables."""
    return cls(params=variables['params'],
               batch_stats=variables.get('batch_stats', {}),
               opt_state=tx.init(variables['params']))

  def variables(self, params: PyTree | None = None,
                dtype: jnp.dtype | None = None, *, train: bool = True,
                batch_stats: PyTree | None = None) -> dict[str, PyTree]:
    """{'params', 'batch_stats'} for `module.apply`.

    Args:
      params: parameters to use instead of `self.params` (e.g. being
        differentiated).
      dtype: if set, floating-point params are cast to it (compute dtype). The
        BatchNorm statistics are cast too in eval mode (they normalise), but
        stay float32 in train mode (they are only accumulated there).
      train: whether the apply runs in train mode.
      batch_stats: statistics to use instead of `self.batch_stats`.
    """
    params = self.params if params is None else params
    batch_stats = self.batch_stats if batch_stats is None else batch_stats
    if dtype is not None:
      params = cast_floats(params, dtype)
      if not train:
        batch_stats = cast_floats(batch_stats, dtype)
    return {'params': params, 'batch_stats': batch_stats}

  def apply_gradients(self, tx: optax.GradientTransformation, grads: PyTree,
                      batch_stats: PyTree) -> NetState:
    """One optimiser update; also stores the new BatchNorm statistics."""
    updates, opt_state = tx.update(grads, self.opt_state, self.params)
    return self.replace(params=optax.apply_updates(self.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)


@flax.struct.dataclass
class TrainState:
  """The full training state of one stage.

  Attributes:
    step: int32 scalar, number of completed train steps.
    rng: uint32 (2,) base PRNG key; step n uses `fold_in(rng, n)`.
    g: the trained network (AT-net, or VG-net's generator).
    d: VG-net's discriminator; None for AT-net.
  """
  step: jax.Array
  rng: jax.Array
  g: NetState
  d: NetState | None = None

  def step_rng(self) -> jax.Array:
    """This step's key: fold_in(rng, step)."""
    return jax.random.fold_in(self.rng, self.step)


def freeze(config: ml_collections.ConfigDict
           ) -> ml_collections.FrozenConfigDict:
  """A hashable copy of `config`, to pass as a static argument of `jax.jit`.

  Equal configs hash equal, so every `jax.jit` of the same step function with
  an equal config reuses one compiled executable.
  """
  if isinstance(config, ml_collections.FrozenConfigDict):
    return config
  return ml_collections.FrozenConfigDict(config)


def jit_with_shardings(fn: Callable[..., Any],
                       config: ml_collections.ConfigDict,
                       mesh: jax.sharding.Mesh, *, donate_state: bool,
                       compiler_options: Mapping[str, Any] | None = None):
  """Jits `fn(state, batch, config)` for data parallelism on `mesh`.

  The state (every leaf) and the outputs are replicated, the batch is split
  along its leading axis over 'data'; `config` is static. `compiler_options`
  are XLA options for this computation only; by default
  `FAST_COMPILE_OPTIONS` when `config.fast_compile` is set, else none.

  Returns:
    `(state, batch) -> fn(state, batch, config)`, compiled on first call.
  """
  replicated = sharding.replicated(mesh)
  jitted = jax.jit(fn, static_argnums=(2,),
                   in_shardings=(replicated, sharding.data_sharding(mesh)),
                   out_shardings=replicated,
                   donate_argnums=(0,) if donate_state else (),
                   compiler_options=_options(compiler_options, config))
  frozen = freeze(config)
  return lambda state, batch: jitted(state, batch, frozen)


class Initializer:
  """An argument-free, jitted state initialiser (see `jit_init`).

  Calling it builds the state; `eval_shape()` gives the abstract state (shapes,
  dtypes and shardings) that checkpoints are restored into, without running it.
  """

  def __init__(self, jitted: Any, rng: jax.Array,
               config: ml_collections.FrozenConfigDict):
    self._jitted, self._rng, self._config = jitted, rng, config

  def __call__(self) -> TrainState:
    return self._jitted(self._rng, self._config)

  def eval_shape(self) -> TrainState:
    return self._jitted.eval_shape(self._rng, self._config)


def jit_init(init_fn: Callable[..., TrainState],
             config: ml_collections.ConfigDict, rng: jax.Array,
             mesh: jax.sharding.Mesh, *,
             compiler_options: Mapping[str, Any] | None = None) -> Initializer:
  """Jits `init_fn(rng, config)` with every output leaf replicated on `mesh`."""
  jitted = jax.jit(init_fn, static_argnums=(1,),
                   out_shardings=sharding.replicated(mesh),
                   compiler_options=_options(compiler_options, config))
  return Initializer(jitted, rng, freeze(config))


# XLA without LLVM optimisation: compiles ~2.5x faster on CPU, runs slower.
FAST_COMPILE_OPTIONS = {'xla_backend_optimization_level': 0}


def _options(compiler_options: Mapping[str, Any] | None,
             config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """Explicit options, else FAST_COMPILE_OPTIONS if `config.fast_compile`."""
  if compiler_options is not None:
    return dict(compiler_options)
  if config.get('fast_compile', False):
    return dict(FAST_COMPILE_OPTIONS)
  return None


def parameter_init_key(rng: jax.Array) -> jax.Array:
  """A key for parameter initialisation, derived from `rng`, of the 'rbg' kind.

  Parameter init draws one random tensor per layer; with the default threefry
  generator XLA compiles each of those draws separately, which makes the
  init of VG-net take ~4x longer to compile on CPU than with the
  RngBitGenerator-based 'rbg' keys. Init values then depend on the backend
  (not on the mesh, since the init is replicated); checkpoints carry the exact
  values. Train-step randomness (dropout) keeps threefry keys, whose bits do
  not depend on how the batch is sharded.
  """
  return jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32),
                                  impl='rbg')


def cast_floats(tree: PyTree, dtype: jnp.dtype) -> PyTree:
  """Casts the floating-point leaves of a pytree to `dtype`."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
      tree)


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype | None:
  """`config.compute_dtype` ('float32' | 'bfloat16'); None means float32."""
  name = config.get('compute_dtype', 'float32')
  if name in ('float32', 'f32'):
    return None
  if name in ('bfloat16', 'bf16'):
    return jnp.bfloat16
  raise ValueError('config.compute_dtype must be float32 or bfloat16, '
                   f'got {name!r}')


def global_norm(tree: PyTree) -> jax.Array:
  """L2 norm over all leaves of a pytree (gradient-norm metric)."""
  return optax.global_norm(tree)


# ----------------------------------------------------------------------------
# The training loop shared by both stages.
# ----------------------------------------------------------------------------


def _iterator_position(train_iter: Any) -> dict[str, Any] | None:
  """`train_iter.get_state()` if the iterator can report its position."""
  get_state = getattr(train_iter, 'get_state', None)
  return None if get_state is None else dict(get_state())


def evaluate(eval_step_fn: Callable[[TrainState, Any], Mapping[str, Any]],
             state: TrainState, batches: Iterable[HostBatch],
             mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Means of `eval_step_fn` metrics over host-local numpy batches."""
  totals, count = {}, 0
  for batch in batches:
    metrics = jax.device_get(
        eval_step_fn(state, sharding.host_local_to_global(batch, mesh)))
    for name, value in metrics.items():
      totals[name] = totals.get(name, 0.0) + float(value)
    count += 1
  return {name: total / max(count, 1) for name, total in totals.items()}


def run_train_loop(
    *, state: TrainState,
    train_step_fn: Callable[[TrainState, Any], tuple[TrainState, Any]],
    train_iter: Iterator[HostBatch], mesh: jax.sharding.Mesh,
    checkpointer: checkpointing.Checkpointer, num_steps: int,
    log_every: int = 100,
    eval_fn: Callable[[TrainState], dict[str, float]] | None = None,
    eval_every: int = 0, write_metrics: MetricsSink | None = None,
    preemption: preemption_lib.PreemptionHandler | None = None) -> TrainState:
  """Runs train steps until `num_steps`, checkpointing along the way.

  Step n+1 is dispatched before step n's metrics are fetched, so the host never
  waits for the device except at logs, saves and evals. Every metric is checked
  for NaN/Inf (raising `NonFiniteLossError` naming the step), and a step is
  verified finite before it is saved.

  Args:
    state: the state to continue from (its `step` is the start).
    train_step_fn: jitted `(state, global_batch) -> (state, metrics)`.
    train_iter: yields host-local numpy batch dicts; its `get_state()` (if any)
      is saved with every checkpoint.
    mesh: the device mesh (batches are sharded over 'data').
    checkpointer: saves at its interval, at the end and on preemption.
    num_steps: stop after this many completed steps.
    log_every: average and write train metrics every N steps.
    eval_fn: `state -> metrics`, run every `eval_every` steps (0 = never).
    eval_every: see eval_fn.
    write_metrics: `(step, metrics)`, called on process 0 only.
    preemption: a handler whose request makes the loop save and exit.

  Returns:
    The final state (also saved).
  """
  step = int(jax.device_get(state.step))
  # Per metric: running sum and count (warm-up and GAN steps of VG-net report
  # different metrics, so a log window may mix them).
  sums: dict[str, float] = {}
  counts: dict[str, int] = {}
  pending = None  # (step, device metrics) not yet fetched.

  def write(at_step: int, metrics: dict[str, float]) -> None:
    logging.info('step %d: %s', at_step,
                 ', '.join(f'{k}={v:.5g}' for k, v in sorted(metrics.items())))
    if write_metrics is not None and jax.process_index() == 0:
      write_metrics(at_step, metrics)

  def fetch() -> None:
    nonlocal pending
    if pending is None:
      return
    at_step, metrics = pending
    pending = None
    metrics = jax.device_get(metrics)
    checkpointing.check_finite(metrics, at_step)
    for name, value in metrics.items():
      sums[name] = sums.get(name, 0.0) + float(value)
      counts[name] = counts.get(name, 0) + 1

  def preempted() -> bool:
    if preemption is None:
      return False
    if jax.process_count() > 1:  # Hosts must agree on the step.
      return checkpointer.reached_preemption(step)
    return preemption.requested

  while step < num_steps:
    if preempted():
      fetch()
      preemption.save_and_exit(checkpointer, step, state,
                               _iterator_position(train_iter))
    try:
      batch = next(train_iter)
    except StopIteration:
      logging.warning('training data exhausted at step %d', step)
      break
    state, metrics = train_step_fn(
        state, sharding.host_local_to_global(batch, mesh))
    fetch()  # The previous step's metrics, while this step runs.
    step += 1
    pending = (step, metrics)
    faults.at('train_step', step)  # Tests only: a kill while the step runs.
    if step % log_every == 0 or step == num_steps:
      fetch()
      write(step, {k: v / counts[k] for k, v in sums.items()})
      sums.clear()
      counts.clear()
    if checkpointer.should_save(step):
      fetch()
      checkpointer.save(step, state, _iterator_position(train_iter))
    if eval_fn is not None and eval_every and step % eval_every == 0:
      write(step, eval_fn(state))
  fetch()
  checkpointer.save(step, state, _iterator_position(train_iter), force=True)
  checkpointer.wait_until_finished()
  return state


def fit(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
        mesh: jax.sharding.Mesh, init_fn: Initializer,
        train_step_fn: Callable[..., Any],
        eval_step_fn: Callable[..., Any] | None,
        make_train_iter: Callable[[dict[str, Any] | None], Iterator[HostBatch]],
        eval_batches: Callable[[], Iterable[HostBatch]] | None = None,
        write_metrics: MetricsSink | None = None) -> TrainState:
  """Restores or initialises, then trains with checkpoints, evals, preemption.

  Config fields: num_train_steps, log_every_steps, eval_every_steps (0 = no
  evals), checkpoint_every_steps, keep_checkpoints.

  Args:
    config: the experiment config.
    workdir: checkpoints go to `workdir/checkpoints`.
    mesh: the device mesh.
    init_fn: argument-free jitted initialiser (see `train_atnet.make_init_fn`).
    train_step_fn: jitted `(state, global batch) -> (state, metrics)`.
    eval_step_fn: jitted `(state, global batch) -> metrics`, or None.
    make_train_iter: `position -> iterator`; position is None for a fresh start,
      else the dict its `get_state()` returned when the checkpoint was saved.
    eval_batches: `() -> iterable of host-local eval batches`, or None.
    write_metrics: `(step, metrics)` sink, process 0 only.

  Returns:
    The final train state.
  """
  checkpointer = checkpointing.Checkpointer(
      os.path.join(os.fspath(workdir), 'checkpoints'),
      max_to_keep=config.keep_checkpoints,
      save_interval_steps=config.checkpoint_every_steps)
  state, position = checkpointing.restore_or_init(checkpointer, init_fn)
  train_iter = make_train_iter(position)
  eval_fn = None
  if eval_batches is not None and eval_step_fn is not None:
    eval_fn = lambda s: evaluate(eval_step_fn, s, eval_batches(), mesh)
  try:
    with preemption_lib.PreemptionHandler() as preemption:
      state = run_train_loop(
          state=state, train_step_fn=train_step_fn, train_iter=train_iter,
          mesh=mesh, checkpointer=checkpointer,
          num_steps=config.num_train_steps,
          log_every=config.log_every_steps, eval_fn=eval_fn,
          eval_every=config.eval_every_steps, write_metrics=write_metrics,
          preemption=preemption)
  finally:
    checkpointer.close()
  return state


def train_and_evaluate(
    trainer: Any, config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    make_train_iter: Callable[[dict[str, Any] | None], Iterator[HostBatch]],
    eval_batches: Callable[[], Iterable[HostBatch]] | None = None,
    write_metrics: MetricsSink | None = None,
    compiler_options: Mapping[str, Any] | None = None) -> TrainState:
  """Trains one stage on every device, resuming from `workdir` if possible.

  Args:
    trainer: the stage's module, `hcmtfg.train_atnet` or `hcmtfg.train_vgnet`
      (its `make_init_fn`, `jit_train_step` and `jit_eval_step` are used).
    config, workdir, make_train_iter, eval_batches, write_metrics: as `fit`.
    compiler_options: XLA options for the jitted init and steps.
  """
  mesh = sharding.make_mesh()
  options = dict(compiler_options=compiler_options)
  init_fn = trainer.make_init_fn(config, jax.random.PRNGKey(config.seed), mesh,
                                 **options)
  return fit(config, workdir, mesh=mesh, init_fn=init_fn,
             train_step_fn=trainer.jit_train_step(config, mesh, **options),
             eval_step_fn=trainer.jit_eval_step(config, mesh, **options),
             make_train_iter=make_train_iter, eval_batches=eval_batches,
             write_metrics=write_metrics)
