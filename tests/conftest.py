"""Shared fixtures (a tiny synthetic BraTS set, a tiny SAN+AAB config) and the `slow` marker: end-to-end runs,
multi-process runs, launchers, the benchmark suite, and unit tests that trace and compile full-depth networks (3 s or
more each). `pytest -m "not slow"` is the fast tier."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end / multi-process / launcher / benchmark-suite tests, and "
                                       "unit tests that build full-depth networks (>= 3 s each on 2 cores); "
                                       "deselect with -m 'not slow'")


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory):
    """Programs that took >= 1 s to compile are kept on disk for the session (per xdist worker): tests compile the
    same tiny models and train steps many times (a resumed run recompiles what the interrupted run compiled). A cache
    directory set by the caller (JAX_COMPILATION_CACHE_DIR, e.g. to reuse one across runs) is left as it is."""
    import jax

    if not jax.config.values["jax_compilation_cache_dir"]:
        jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    return jax.config.values["jax_compilation_cache_dir"]


@pytest.fixture
def no_xla_opt():
    """For one test: most XLA optimisations off (`jax_disable_most_optimizations`), where compiling a tiny model
    costs more than running it unoptimised. For comparisons with a tolerance: unoptimised programs round differently.
    Executables compiled meanwhile stay in JAX's caches: jitted functions that the test shares with later tests may
    run unoptimised there (slower, same maths)."""
    import jax

    saved = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", saved)


@pytest.fixture
def fast_compile(no_xla_opt):
    """`no_xla_opt` and rbg PRNG keys (threefry initialisers compile ~7x slower on XLA:CPU), for one test. Not for
    tests whose expected values depend on the draws of fixed threefry seeds."""
    import jax

    saved = jax.config.values["jax_default_prng_impl"]
    jax.config.update("jax_default_prng_impl", "rbg")
    yield
    jax.config.update("jax_default_prng_impl", saved)


@pytest.fixture(scope="session")
def tiny_brats_root(tmp_path_factory) -> str:
    from gazejax.data.synthetic import brats as synth

    out = tmp_path_factory.mktemp("synthetic_brats")
    return synth.generate(str(out), cases=8, seed=3, shape=(40, 40, 36), gaze_share=0.6)


def sigterm_at_step(monkeypatch, step: int):
    """Makes the trainer's progress bar send this process SIGTERM right after it counts step `step` (a preemption
    at that step); returns the original `ProgressBar.update`, to put back before the resumed run."""
    import signal

    from gazejax.engine import trainer as train

    original = train.ProgressBar.update

    def update_then_sigterm(self, n=1, **kw):
        original(self, n, **kw)
        if self.count == step:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train.ProgressBar, "update", update_then_sigterm)
    return original


def resume_after_sigterm(monkeypatch, run, workdir: str, step: int, losses, reference: dict) -> dict:
    """`run(workdir)` stopped by SIGTERM after step `step` (preempted, losses logged up to `step`, no report yet),
    then the same command again; asserts the resumed run logged `reference`'s losses step for step, returns them."""
    from gazejax.engine import trainer as train

    original = sigterm_at_step(monkeypatch, step)
    with pytest.raises(train.Preempted, match=f"SIGTERM at step {step}"):
        run(workdir)
    assert max(losses(workdir)) == step and not os.path.exists(os.path.join(workdir, "report.md"))
    monkeypatch.setattr(train.ProgressBar, "update", original)
    run(workdir)  # the same command again: resumes after `step`
    resumed = losses(workdir)
    assert sorted(resumed) == sorted(reference)
    np.testing.assert_allclose([resumed[s] for s in sorted(resumed)], [reference[s] for s in sorted(reference)],
                               rtol=1e-6)
    return resumed


def apply_overrides(c, overrides: dict):
    """Sets dotted keys ("data.num_workers": 2) on config `c` in place; returns `c`."""
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def tiny_brats_config(root: str, cache: str, **overrides):
    """configs/brats.py demo preset shrunk to a few seconds of CPU compile + run."""
    from configs import brats

    c = brats.get_config("preset=demo,method=ours")
    c.data.root = root
    c.data.cache_dir = cache
    c.data.crop_size = (32, 32, 32)
    c.data.num_threads = 1
    c.model.width = 2
    c.model.san_width = 2
    c.model.aab_heads = 1
    c.model.aab_head_dim = 4
    c.epochs = 1
    c.eval_every_epochs = 100
    c.eval.figure_cases = 0
    c.eval.save_predictions = False
    c.log_every_steps = 1
    c.checkpoint.async_save = False
    return apply_overrides(c, overrides)
