"""The three ATVGnet networks (Flax linen, NHWC) and a small factory.

    from hcmtfg import models
    nets = models.build_models({"vgnet": {"image_size": 64, "base_width": 16}})
    variables = nets.vgnet.init(rngs, *nets.vgnet.dummy_inputs(), train=False)
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

from hcmtfg.models.at_net import ATNet
from hcmtfg.models.discriminator import DiscriminatorOutput
from hcmtfg.models.discriminator import RegressionDiscriminator
from hcmtfg.models.vg_net import VGNet
from hcmtfg.models.vg_net import VGNetOutput

__all__ = [
    "ATNet", "VGNet", "VGNetOutput", "RegressionDiscriminator",
    "DiscriminatorOutput", "Networks", "build_models",
]


class Networks(NamedTuple):
  """The networks named in a model config; None for the ones it leaves out."""
  atnet: Optional[ATNet]
  vgnet: Optional[VGNet]
  discriminator: Optional[RegressionDiscriminator]


def build_models(model_config: Mapping[str, Any]) -> Networks:
  """Builds the networks from a config with optional sub-mappings.

  Args:
    model_config: mapping (dict or ConfigDict) with any of the keys 'atnet',
      'vgnet', 'discriminator', each holding that network's attributes (see
      the classes' docstrings; missing attributes take the release's values).

  Returns:
    `Networks`, None for a network the config does not mention.

  Raises:
    ValueError: for an unknown top-level key.
    TypeError: for an unknown attribute of a network.
  """
  unknown = set(model_config) - set(Networks._fields)
  if unknown:
    raise ValueError(f"unknown networks in the model config: {sorted(unknown)}")
  classes = {"atnet": ATNet, "vgnet": VGNet,
             "discriminator": RegressionDiscriminator}
  built = {}
  for field in Networks._fields:
    sub = model_config.get(field)
    built[field] = None if sub is None else classes[field].from_config(dict(sub))
  return Networks(**built)
