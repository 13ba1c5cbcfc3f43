r"""Converts the ATVGnet release's PyTorch checkpoints to Orbax checkpoints.

  python -m launch.convert_checkpoint \
      --atnet_pth=atnet_lstm_18.pth --vgnet_pth=generator_23.pth \
      --discriminator_pth=discriminator_23.pth --output_dir=converted

Writes <output_dir>/atnet, <output_dir>/vgnet and/or <output_dir>/discriminator
(one per given checkpoint; paths may be relative or start with `~`), each
holding the Flax variables and the JSON model
config of the network that uses them; read them back with
`hcmtfg.weights.checkpoint_io.load_converted(output_dir, name)`. Needs torch
(requirements-torch.txt).
"""

from absl import app
from absl import flags
from absl import logging

from hcmtfg import models
from hcmtfg import paths
from hcmtfg.errors import InputError
from hcmtfg.weights import checkpoint_io
from hcmtfg.weights import convert_torch

_ATNET_PTH = flags.DEFINE_string(
    "atnet_pth", None, "Release AT-net checkpoint (atnet_lstm_*.pth).")
_VGNET_PTH = flags.DEFINE_string(
    "vgnet_pth", None, "Release VG-net generator checkpoint (generator_*.pth).")
_DISCRIMINATOR_PTH = flags.DEFINE_string(
    "discriminator_pth", None,
    "Release discriminator checkpoint (discriminator_*.pth); its unused "
    "'decoder' MLP is dropped.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Directory receiving one Orbax checkpoint per network "
    "(atnet/, vgnet/, discriminator/); existing ones are replaced.")
_CONVGRU_OVER_BATCH_AXIS = flags.DEFINE_bool(
    "convgru_over_batch_axis", True,
    "Recorded in the VG-net config: True reproduces the release's ConvGRU, "
    "which recurs over the batch axis (no temporal recurrence for one clip), "
    "the behaviour the release weights were trained with; False recurs over "
    "time as the paper intends.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  jobs = [
      ("atnet", _ATNET_PTH.value, models.ATNet(), convert_torch.convert_atnet),
      ("vgnet", _VGNET_PTH.value,
       models.VGNet(convgru_over_batch_axis=_CONVGRU_OVER_BATCH_AXIS.value),
       convert_torch.convert_vgnet),
      ("discriminator", _DISCRIMINATOR_PTH.value,
       models.RegressionDiscriminator(), convert_torch.convert_discriminator),
  ]
  jobs = [(name, paths.user_path(path), module, convert)
          for name, path, module, convert in jobs if path]
  if not jobs:
    raise app.UsageError("give at least one of --atnet_pth, --vgnet_pth, "
                         "--discriminator_pth")
  for name, path, module, convert in jobs:
    try:
      variables = convert(convert_torch.load_state_dict(path), module=module)
    except convert_torch.ConversionError as e:
      raise SystemExit(f"error: {path}: {e}") from e
    except InputError as e:
      raise SystemExit(f"error: {e}") from e
    except ImportError as e:
      raise SystemExit(f"error: reading .pth files needs torch "
                       f"(pip install -r requirements-torch.txt): {e}") from e
    written = checkpoint_io.save_converted(_OUTPUT_DIR.value, name, variables,
                                           module.to_config())
    logging.info("converted %s -> %s (%s)", path, written, type(module).__name__)


if __name__ == "__main__":
  flags.mark_flag_as_required("output_dir")
  app.run(main)
