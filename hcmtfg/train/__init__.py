"""Training: the generic trainer, each stage's steps, and what keeps a run safe.

  trainer.py         train(config, workdir, builder): set-up, loop, evaluation, checkpoints
  atnet_steps.py, vgnet_steps.py   each stage's state, jitted steps and summaries
  train_state.py     train-state pytrees, the optimiser, jit helpers
  losses.py          dynamic pixel-wise loss, masked landmark loss, GAN losses
  checkpoints.py, manifest.py   Orbax checkpoints with a manifest per step
  preemption.py, locking.py, workdir.py   SIGTERM, one trainer per workdir, the workdir's files
  summaries.py, visualize.py, image_metrics.py   TensorBoard scalars and images
  init_from.py       starting from converted release weights

Imports: `data`, `weights`, `features`, `models`, `runtime` and the root modules.
"""
