"""Network weights on disk: reading them for inference, converting the release's.

  checkpoint_io.py   networks from a training workdir or a converted-checkpoint folder
  convert_torch.py   the release's PyTorch state_dicts -> Flax variables

Imports: `models`, `features`, `runtime` and the root modules.
"""
