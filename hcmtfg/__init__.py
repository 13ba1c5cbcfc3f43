"""hcmtfg: hierarchical cross-modal talking-face generation (ATVGnet) in JAX/Flax."""

__version__ = "0.1.0"
