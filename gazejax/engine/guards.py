"""Checks that a train state may be saved: its loss on the batch it was trained on, its parameters, collections and
optimiser moments are all finite. A blow-up shows first as a finite but huge update (weights ~1e18) whose loss only
the next step finds to be inf; checking the loss of the updated state before saving keeps such a state off disk, so
"rerun with a lower learning rate" resumes from a state that trains."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def tree_finite(tree: Any) -> jax.Array:
    """True when every inexact (float/complex) leaf of `tree` is finite; integer leaves (step counts) are skipped."""
    ok = jnp.array(True)
    for leaf in jax.tree.leaves(tree):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(leaf))
    return ok


def make_state_check(loss_of: Callable, replicated, compiler_options: dict | None = None) -> Callable:
    """A jitted `(state, batch) -> (loss_finite, state_finite)` for a `loss_of(params, collections, batch, rng)`
    that returns the training loss (the train step's forward pass, no gradient); nothing of the state changes.
    `compiler_options`: the train step's (`jax.jit`'s argument)."""

    def check(state, batch):
        _, rng = jax.random.split(state.rng)
        loss = loss_of(state.params, state.collections, batch, rng)
        return jnp.isfinite(loss), tree_finite((state.params, state.collections, state.opt_state))

    return jax.jit(check, out_shardings=replicated, compiler_options=compiler_options)


def describe(loss_ok: bool, state_ok: bool) -> str:
    """Which check failed, in words."""
    parts = ([] if loss_ok else ["its loss"]) + ([] if state_ok else ["its parameters or optimiser moments"])
    return " and ".join(parts) + " not finite"


def message(what: str, latest: int | None) -> str:
    """The one-line NonFiniteLossError text: what failed, the checkpoint a rerun resumes from, the advice."""
    kept = (f"last good checkpoint: {latest}, where a rerun resumes" if latest is not None
            else "no checkpoint kept: a rerun starts afresh")
    return f"{what}; stopped without saving it ({kept}). Rerun with a lower optim.lr, or check the data."
