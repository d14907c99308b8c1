"""gazejax.metrics."""
