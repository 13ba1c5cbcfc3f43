"""Speed benchmarks and release tooling, run as `python -m benchmarks.X`.

The release's networks declared in PyTorch (`release_torch`, also read by the
parity tests), their training steps (`release_torch_train`), the side-by-side
benchmark (`benchmark`), the round trip through the converter
(`release_roundtrip`) and throughput scripts printing JSON. These modules import
`hcmtfg` (and each other), never `launch` or `tests`; nothing outside this
folder and `tests` imports them.
"""
