"""gazejax.data.synthetic."""
