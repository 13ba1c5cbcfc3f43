"""Deliberately broken variants of the code, to prove that tests can fail.

A test that checks a feature (AT-net learns from the audio, ...) runs its check
on a variant with the feature broken too, and expects the check to fail. The
mutations live here, outside the library, as Flax method interceptors.

  python -m tests.mutations deaf_atnet --config=... --workdir=...

runs `launch.train` with AT-net deaf to the audio (for end-to-end tests).
"""

import contextlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp


def _zero_audio_features(next_fun, args, kwargs, context):
  """Interceptor: the output of AT-net's audio MLP layers ('audio_fc_*') is
  replaced by zeros."""
  out = next_fun(*args, **kwargs)
  if (context.method_name == '__call__'
      and (context.module.name or '').startswith('audio_fc_')):
    return jax.tree.map(jnp.zeros_like, out)
  return out


def deaf_atnet() -> contextlib.AbstractContextManager:
  """While active, AT-net traced in this thread is deaf to the audio.

  The features of its audio encoder are zeroed before they meet the example
  landmark's, so the LSTM and the output layer see no audio. Only functions
  traced inside the context are affected (jit caches what it traced before:
  wrap the function in a new one, see `deafen`).
  """
  return nn.intercept_methods(_zero_audio_features)


def deafen(fn):
  """`fn` (e.g. a train step) as a new function that traces AT-net deaf."""

  def deaf(*args, **kwargs):
    with deaf_atnet():
      return fn(*args, **kwargs)

  return deaf


MUTATIONS = {'deaf_atnet': deaf_atnet}


def main() -> None:
  """`python -m tests.mutations MUTATION [launch.train flags]`."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from launch import train  # pylint: disable=g-import-not-at-top
  mutation = MUTATIONS[sys.argv.pop(1)]
  flags.mark_flags_as_required(['config', 'workdir'])
  with mutation():
    app.run(train.main)


if __name__ == '__main__':
  main()
