"""`python -m gazejax.main` on the toy method with a wider model (many arrays of a few hundred KiB, so a checkpoint
is many TensorStore writes in flight at once), for the full-disk test: this file is both the --config file and,
run as a script, the entry point (it registers the method, then hands over to `gazejax.main`).

  python tests/reliability/full_disk_run.py --config=tests/reliability/full_disk_run.py --workdir=DIR
"""
from __future__ import annotations

import dataclasses
import os
import sys

import flax.linen as nn

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WIDTH, LAYERS = 256, 24  # 49 arrays, 5.8 MiB: a checkpoint takes ~5.6 MiB (Adam's zero moments compress away)


class WideToy(nn.Module):
    """The toy's [B, 3] -> {"y": [B]}, plus a stack of Dense layers whose output is multiplied by zero: the loss
    and gradients are the toy's, the state to save is large."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = x
        for _ in range(LAYERS):
            h = nn.Dense(WIDTH)(h)
        return {"y": nn.Dense(1, use_bias=False)(x)[:, 0] + 0.0 * h.sum(-1)}


def get_config():
    from tests.engine import toy

    return toy.config(**{"checkpoint.every_steps": 1, "checkpoint.async_save": True})


def main() -> None:
    sys.path.insert(0, REPO)
    from gazejax import main as cli, methods
    from tests.engine import toy

    method = dataclasses.replace(toy.make_method(epochs=1), build_model=lambda config: WideToy())
    methods.get = lambda name: method
    cli.run()


if __name__ == "__main__":
    main()
