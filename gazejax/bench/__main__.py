"""`python -m gazejax.bench`: see `gazejax.bench.step`."""
from gazejax.bench import step

step.main()
