"""gazejax.data."""
