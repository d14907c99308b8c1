"""gazejax: one JAX/Flax engine for medical-imaging methods that learn from radiologists' eye gaze."""

__version__ = "0.1.0"
