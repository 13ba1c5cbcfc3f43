r"""The paper's ablation on our data: VG-net variants trained and scored over steps.

  python -m launch.learning_study --output_dir=DIR \
      [--config=configs/vgnet.py:synthetic] [--steps=N] [--eval_every=K] \
      [--variants=full,l1,no_regression,no_attention] [--data_dir=DIR/data] \
      [--split=test] [--max_clips=N] [--config.FIELD=VALUE ...]

Trains each variant (the full model; plain L1 instead of the dynamic
pixel-wise loss; no landmark regression in the discriminator; no attention)
with the one trainer in DIR/<variant>, checkpointing every K steps, scores VG-net
alone on the true landmarks of the split at each of those checkpoints
(`hcmtfg.evaluation.evaluate`), with the example frame repeated as the baseline, and
writes DIR/learning_study.md (the table, the command, the wall time) and
DIR/learning_study.png (a panel per metric against steps). Running the same
command again continues where it stopped; a larger --steps extends the curves.
`hcmtfg.evaluation.learning_study` documents the files.

--steps defaults to the config's num_train_steps and --eval_every to its
eval_every_steps; --data_dir defaults to DIR/data (a synthetic corpus is built
there on first use). Give folders as relative paths: they appear in the report.
"""

from __future__ import annotations

import shlex
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/vgnet.py:synthetic", "The VG-net config every variant "
    "starts from.", lock_config=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the workdirs, "
                                  "evaluations and the report go.")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps per variant "
                              "(default: the config's num_train_steps).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", None, "Evaluate every N "
                                   "steps (default: the config's "
                                   "eval_every_steps).")
_VARIANTS = flags.DEFINE_list("variants", "full,l1,no_regression,no_attention",
                              "Variants to run, in order.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory "
                                "(default: OUTPUT_DIR/data).")
_SPLIT = flags.DEFINE_string("split", "test", "Split evaluated.")
_MAX_CLIPS = flags.DEFINE_integer("max_clips", None, "Evaluate only the first "
                                  "N clips of the split.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 4, "Clips per network call "
                                   "in the evaluations.")


def _config_name() -> str:
  """The --config value and its overrides, as flags."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top  (JAX)
  holder = flags.FLAGS["config"]
  flat = traverse_util.flatten_dict(
      config_flags.get_override_values(holder), sep=".")
  return " ".join([config_flags.get_config_filename(holder)]
                  + [f"--config.{k}={v}" for k, v in flat.items()])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # pylint: disable=g-import-not-at-top  (heavy imports after flag parsing)
  from data_pipelines import build
  from hcmtfg.evaluation import learning_study
  from hcmtfg.train import summaries
  from hcmtfg.errors import InputError
  # pylint: enable=g-import-not-at-top
  if not _OUTPUT_DIR.value:
    raise app.UsageError("give --output_dir")
  unknown = [v for v in _VARIANTS.value if v not in learning_study.VARIANTS]
  if unknown or not _VARIANTS.value:
    raise app.UsageError(f"--variants: unknown {unknown}; choose from "
                         f"{','.join(learning_study.VARIANTS)}")
  for name, holder in (("steps", _STEPS), ("eval_every", _EVAL_EVERY),
                       ("max_clips", _MAX_CLIPS), ("batch_size", _BATCH_SIZE)):
    if holder.value is not None and holder.value < 1:
      raise app.UsageError(f"--{name} must be >= 1")
  if _CONFIG.value.get("stage") != "vgnet":
    raise app.UsageError("--config must be a VG-net config (configs/vgnet.py)")
  summaries.quiet_library_logs()
  data_dir = _DATA_DIR.value or f"{_OUTPUT_DIR.value.rstrip('/')}/data"
  command = " ".join(["python -m launch.learning_study"]
                     + [shlex.quote(a) for a in sys.argv[1:]])
  say = lambda text: print(f"==> {text}", flush=True)
  try:
    paths = learning_study.run(
        _CONFIG.value, _OUTPUT_DIR.value,
        prepare_dataset=build.prepare_dataset, variants=_VARIANTS.value,
        steps=_STEPS.value, eval_every=_EVAL_EVERY.value, data_dir=data_dir,
        split=_SPLIT.value, max_clips=_MAX_CLIPS.value,
        batch_size=_BATCH_SIZE.value, config_name=_config_name(),
        command=command, say=say)
  except InputError as e:
    raise SystemExit(f"error: {e}") from e
  with open(paths["md"], encoding="utf-8") as f:
    print(f.read())
  for name in ("md", "png", "json"):
    say(f"{name:>4}: {paths[name]}")


if __name__ == "__main__":
  app.run(main)
