"""gazejax.methods."""
