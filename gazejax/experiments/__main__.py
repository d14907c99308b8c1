"""`python -m gazejax.experiments`: see `gazejax.experiments.runner`."""
import sys

from absl import app

from gazejax.experiments import runner

app.run(lambda argv: sys.exit(runner.main(argv)))
