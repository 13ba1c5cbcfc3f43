"""Training: the generic trainer, each stage's steps, and what keeps a run safe.

  trainer.py         train(config, workdir, builder): set-up, state, checkpoints
  loop.py            the training loop (run_train_loop) and its evaluations
  stage.py           Stage: what a stage gives the trainer (its one contract)
  atnet_steps.py, vgnet_steps.py   each stage's state, jitted steps, summaries
                     and its STAGE
  vgnet_terms.py     VG-net's generator pixel terms and diagnostics
  train_state.py     train-state pytrees, the optimiser, jit helpers
  losses.py          dynamic pixel-wise loss, masked landmark loss, GAN losses
  checkpoints.py, manifest.py   Orbax checkpoints with a manifest per step
  preemption.py, locking.py, workdir.py   SIGTERM, one trainer per workdir,
                     the workdir's files
  summaries.py, visualize.py, image_metrics.py   TensorBoard scalars and images
  init_from.py       starting from converted release weights

Imports: `data`, `weights`, `features`, `models`, `runtime`, the root modules,
and the stages' config defaults (`configs.atnet`, `configs.vgnet`).
"""
