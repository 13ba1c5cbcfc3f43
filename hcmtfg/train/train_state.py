"""The train state of both stages, their optimiser and the jit helpers.

`TrainState` holds everything a resumed run needs, as one pytree: the step, the
RNG key and, per network, its parameters, BatchNorm statistics and optimiser
state. AT-net training uses `g` only (`d` is None); VG-net training uses `g`
(the generator) and `d` (the discriminator). It holds arrays only; modules and
optimisers are rebuilt from the config, which the jitted step functions take as
a static (hashable, frozen) argument.

The step modules (`hcmtfg.train.atnet_steps`, `hcmtfg.train.vgnet_steps`) build their
states and jitted steps from these pieces; the trainer (`hcmtfg.train.trainer`) runs
them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from hcmtfg.runtime import sharding

PyTree = Any


def learning_rate_schedule(optim_config: ml_collections.ConfigDict
                           ) -> optax.Schedule | float:
  """The learning rate: constant (the release), or a cosine decay.

  Args:
    optim_config: `learning_rate`, `decay_steps` (0: constant) and
      `final_learning_rate` (where the cosine ends, reached at step
      decay_steps and held after it).
  """
  decay_steps = int(optim_config.decay_steps)
  if decay_steps <= 0:
    return optim_config.learning_rate
  return optax.cosine_decay_schedule(
      optim_config.learning_rate, decay_steps,
      alpha=optim_config.final_learning_rate / optim_config.learning_rate)


def make_optimizer(optim_config: ml_collections.ConfigDict
                   ) -> optax.GradientTransformation:
  """Adam as the release trains both stages.

  Args:
    optim_config: fields `learning_rate`, `b1`, `b2` (configs/common.py has
      the release's values) and the schedule fields of
      `learning_rate_schedule`.

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


# XLA without LLVM optimisation: quicker to compile, slower to run (for
# tests and smoke runs, whose steps run a few times).
FAST_COMPILE_OPTIONS = {'xla_backend_optimization_level': 0}


def _options(compiler_options: Mapping[str, Any] | None,
             config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """Explicit options, else FAST_COMPILE_OPTIONS if `config.fast_compile`."""
  if compiler_options is not None:
    return dict(compiler_options)
  if config.fast_compile:
    return dict(FAST_COMPILE_OPTIONS)
  return None


def parameter_init_key(rng: jax.Array) -> jax.Array:
  """A key for parameter initialisation, derived from `rng`, of the 'rbg' kind.

  Parameter init draws one random tensor per layer; with the default threefry
  generator XLA compiles each of those draws separately, and the init of a
  network with many layers (VG-net) becomes slow to compile. The
  RngBitGenerator-based 'rbg' keys keep the init's compilation short. Init
  values then depend on the backend
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
  name = config.compute_dtype
  if name in ('float32', 'f32'):
    return None
  if name in ('bfloat16', 'bf16'):
    return jnp.bfloat16
  raise ValueError('config.compute_dtype must be float32 or bfloat16, '
                   f'got {name!r}')


def global_norm(tree: PyTree) -> jax.Array:
  """L2 norm over all leaves of a pytree (gradient-norm metric)."""
  return optax.global_norm(tree)
