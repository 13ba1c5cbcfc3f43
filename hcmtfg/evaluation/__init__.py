"""Measuring what the networks make: metrics, batch evaluation, the ablation study.

  evaluate.py        the networks on a dataset split: every path, every metric
  metrics.py         SSIM, PSNR (release and plain), LMD, CPBD, landmark errors
  mouth_metrics.py   inner-lip aperture, its r with the driving landmarks, sync proxy
  speech_envelope.py the speech's RMS envelope per video frame (waveform or stored MFCC)
  report.py          an evaluation run: metrics.json and the metrics.md table
  learning_study.py  the paper's ablation as curves over training steps (runs)
  study_report.py    the study's numbers, markdown table and plot

Imports: `inference`, `train`, `data`, `weights`, `features`, `media`, `models`,
`runtime` and the root modules.
"""
