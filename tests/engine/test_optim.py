"""Tests of gazejax.engine.optim: Ranger against a float64 NumPy transcription of lessw2020's Ranger step, GC axes,
Lookahead, freezing and schedules."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gazejax.engine import optim

RNG = np.random.default_rng(0)
KERNEL0 = RNG.normal(size=(3, 2))  # Flax layout (in, out)
BIAS0 = RNG.normal(size=(2,))
TARGET = {"bias": RNG.normal(size=(2,)), "kernel": RNG.normal(size=(3, 2))}
OFFSETS = [{"bias": RNG.normal(size=(2,)), "kernel": RNG.normal(size=(3, 2))} for _ in range(8)]


def grads_at(params, step):
    """Gradient of 0.5 |p - target|^2 plus a per-step offset: depends on params, so Lookahead resets matter."""
    return {name: np.asarray(params[name], np.float64) - TARGET[name] + OFFSETS[step][name] for name in TARGET}


def ranger_reference(steps, lr, wd, b1=0.95, b2=0.999, eps=1e-5, k=6, alpha=0.5, threshold=5):
    """Ranger.step (20.4.11) written out per parameter in float64; returns the params after each step and N_sma."""
    params = {"bias": BIAS0.copy(), "kernel": KERNEL0.copy()}
    slow = {name: value.copy() for name, value in params.items()}
    m = {name: np.zeros_like(value) for name, value in params.items()}
    v = {name: np.zeros_like(value) for name, value in params.items()}
    history, n_smas = [], []
    for t in range(1, steps + 1):
        grads = grads_at(params, t - 1)
        n_sma_max = 2 / (1 - b2) - 1
        n_sma = n_sma_max - 2 * t * b2**t / (1 - b2**t)
        n_smas.append(n_sma)
        for name in params:
            g = grads[name].copy()
            if g.ndim > 1:  # torch kernel (out, in) is our (in, out).T: centre over the input axis
                g = g - g.mean(axis=0, keepdims=True)
            m[name] = b1 * m[name] + (1 - b1) * g
            v[name] = b2 * v[name] + (1 - b2) * g * g
            p = params[name] - wd * lr * params[name]
            if n_sma > threshold:
                step_size = math.sqrt(
                    (1 - b2**t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2) / n_sma * n_sma_max / (n_sma_max - 2)
                ) / (1 - b1**t)
                p = p - step_size * lr * m[name] / (np.sqrt(v[name]) + eps)
            else:
                p = p - lr / (1 - b1**t) * m[name]
            if t % k == 0:
                slow[name] = slow[name] + alpha * (p - slow[name])
                p = slow[name].copy()
            params[name] = p
        history.append({name: value.copy() for name, value in params.items()})
    return history, n_smas


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_ranger_matches_reference_sequence(wd):
    steps, lr = 8, 0.1
    expected, n_smas = ranger_reference(steps, lr, wd)
    # The sequence covers un-rectified steps 1-5, rectified 6-8 and the Lookahead sync at step 6.
    assert [n > 5 for n in n_smas] == [False] * 5 + [True] * 3

    tx = optim.ranger(lr, weight_decay=wd)
    params = {"bias": jnp.asarray(BIAS0, jnp.float32), "kernel": jnp.asarray(KERNEL0, jnp.float32)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    for t in range(steps):
        grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads_at(params, t))
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for name in params:
            np.testing.assert_allclose(params[name], expected[t][name], rtol=2e-5, atol=2e-6, err_msg=f"step {t + 1}")


def test_ranger_reference_is_sensitive_to_gc_and_sync():
    """The reference itself distinguishes the pieces: without GC or without the sync the trajectory differs."""
    lr, steps = 0.1, 7
    base, _ = ranger_reference(steps, lr, 0.0)
    no_sync, _ = ranger_reference(steps, lr, 0.0, k=100)
    assert np.abs(base[5]["kernel"] - no_sync[5]["kernel"]).max() > 1e-2
    tx = optim.ranger(lr, centralize=False)
    params = {"bias": jnp.asarray(BIAS0, jnp.float32), "kernel": jnp.asarray(KERNEL0, jnp.float32)}
    state = tx.init(params)
    updates, state = tx.update(jax.tree.map(jnp.asarray, grads_at(params, 0)), state, params)
    params = optax.apply_updates(params, updates)
    assert np.abs(np.asarray(params["kernel"]) - base[0]["kernel"]).max() > 1e-3
    np.testing.assert_allclose(params["bias"], base[0]["bias"], rtol=1e-5)  # GC never touches 1-D leaves


def test_n_sma_float32_matches_float64():
    t = jnp.arange(1, 20001, dtype=jnp.float32)
    for b2 in (0.999, 0.99, 0.9999):
        tt = np.arange(1, 20001, dtype=np.float64)
        n_sma_max = 2 / (1 - b2) - 1
        expected = n_sma_max - 2 * tt * b2**tt / (1 - b2**tt)
        np.testing.assert_allclose(optim._n_sma(b2, t), expected, rtol=1e-6, atol=2e-5)


def test_gc_keeps_last_axis_unlike_optax_centralize():
    kernel = jnp.asarray(RNG.normal(size=(3, 3, 4, 8)), jnp.float32)  # HWIO conv kernel
    tree = {"kernel": kernel, "bias": jnp.arange(8.0)}
    ours, _ = optim.centralize_last_axis().update(tree, optax.EmptyState())
    # Each output filter has zero mean over (H, W, I).
    np.testing.assert_allclose(ours["kernel"].mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
    np.testing.assert_array_equal(ours["bias"], tree["bias"])
    # Same as optax.centralize in torch layout (out first) ...
    torch_layout = jnp.moveaxis(kernel, -1, 0)
    theirs_torch, _ = optax.centralize().update(torch_layout, optax.EmptyState())
    np.testing.assert_allclose(ours["kernel"], jnp.moveaxis(theirs_torch, 0, -1), atol=1e-6)
    # ... but not optax.centralize applied to the Flax layout, which keeps axis 0.
    theirs_flax, _ = optax.centralize().update(kernel, optax.EmptyState())
    assert np.abs(np.asarray(theirs_flax) - np.asarray(ours["kernel"])).max() > 1e-2


def test_lookahead_sync_returns_plain_params():
    tx = optim.lookahead_plain(k=2, alpha=0.5)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    step = {"w": jnp.ones(3)}
    u1, state = tx.update(step, state, params)  # fast step: passes through
    params = optax.apply_updates(params, u1)
    np.testing.assert_allclose(params["w"], 1.0)
    u2, state = tx.update(step, state, params)  # sync: fast would be 2, slow 0 -> 1
    params = optax.apply_updates(params, u2)
    np.testing.assert_allclose(params["w"], 1.0)
    np.testing.assert_allclose(state.slow["w"], 1.0)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(step, state)


@pytest.mark.parametrize("form", ["predicate", "pytree"])
def test_freeze_leaves_frozen_params_bit_identical(form):
    params = {
        "encoder": {"conv": {"kernel": jnp.asarray(RNG.normal(size=(3, 4)), jnp.float32), "bias": jnp.ones(4)}},
        "head": {"kernel": jnp.asarray(RNG.normal(size=(4, 2)), jnp.float32), "bias": jnp.ones(2)},
    }
    if form == "predicate":
        trainable = optim.path_filter(["head/*"])
    else:
        trainable = {"encoder": {"conv": {"kernel": False, "bias": False}}, "head": {"kernel": True, "bias": True}}
    tx = optim.freeze(optim.ranger(0.1, weight_decay=0.1, k=2), trainable, params)
    state = tx.init(params)
    new = params
    for _ in range(3):  # includes a Lookahead sync
        grads = jax.tree.map(lambda p: jnp.ones_like(p) + p, new)
        updates, state = tx.update(grads, state, new)
        new = optax.apply_updates(new, updates)
    for name in ("kernel", "bias"):
        frozen_before, frozen_after = params["encoder"]["conv"][name], new["encoder"]["conv"][name]
        np.testing.assert_array_equal(np.asarray(frozen_after), np.asarray(frozen_before))
        assert not np.allclose(new["head"][name], params["head"][name])


def test_path_filter_glob_and_regex():
    f = optim.path_filter(["encoder/*", "re:/bias$"])
    assert f("encoder/encoder1/conv1/kernel", None)
    assert f("decoder/out/bias", None)
    assert not f("decoder/out/kernel", None)
    assert not f("my_encoder/kernel", None)
    paths = []
    jax.tree_util.tree_map_with_path(lambda p, x: paths.append(optim.path_string(p)), {"a": {"b": [1, 2]}})
    assert paths == ["a/b/0", "a/b/1"]


def test_warmup_cosine_after():
    schedule = optim.warmup_cosine_after(1e-4, total_steps=210, decay_start_step=100, final_lr=1e-6)
    np.testing.assert_allclose([schedule(s) for s in (0, 50, 100)], 1e-4, rtol=1e-6)
    np.testing.assert_allclose(schedule(155), (1e-4 + 1e-6) / 2, rtol=1e-5)
    np.testing.assert_allclose(schedule(100 + 110 / 3), 1e-6 + (1e-4 - 1e-6) * 0.75, rtol=1e-5)
    np.testing.assert_allclose([schedule(210), schedule(300)], 1e-6, rtol=1e-5)
    warm = optim.warmup_cosine_after(1.0, 10, 5, warmup_steps=4)
    np.testing.assert_allclose([warm(s) for s in range(5)], [0.25, 0.5, 0.75, 1.0, 1.0])
    with pytest.raises(ValueError, match="decay_start_step"):
        optim.warmup_cosine_after(1.0, 10, 20)


def test_make_optimizer_names_and_defaults():
    params = {"w": jnp.ones((2, 2))}
    grads = {"w": jnp.full((2, 2), 0.5)}
    for name in ("ranger", "adam", "adamw", "sgd"):
        tx = optim.make_optimizer(name, 0.1)
        updates, _ = tx.update(grads, tx.init(params), params)
        assert np.all(np.isfinite(updates["w"]))
    # SGD with coupled L2, first step: -lr * (g + wd p) * (1 + momentum) for Nesterov with zero initial trace.
    tx = optim.make_optimizer("sgd", 0.1, weight_decay=0.1)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * (0.5 + 0.1) * 1.9, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.make_optimizer("lion", 0.1)


def test_stage_tx_warmup_epochs_then_cosine():
    """A stage's optimizer overrides take `warmup_epochs` (SSL recipes: linear warm-up, then cosine): plain SGD
    (no momentum) on a unit gradient makes the update equal to -lr(step)."""
    import ml_collections

    from gazejax.engine import stage_rules
    from gazejax.engine.api import Stage

    config = ml_collections.ConfigDict({"optim": {"name": "sgd", "lr": 1.0, "momentum": 0.0, "nesterov": False}})
    stage = Stage(name="pretrain", epochs=4, optimizer={"warmup_epochs": 1, "decay_start_epoch": 1})
    params = {"w": jnp.zeros(())}
    tx = stage_rules.stage_tx(config, stage, steps_per_epoch=2, params=params)
    state, lrs = tx.init(params), []
    for _ in range(8):
        updates, state = tx.update({"w": jnp.ones(())}, state, params)
        lrs.append(-float(updates["w"]))
    cosine = [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    np.testing.assert_allclose(lrs, [0.5, 1.0] + cosine, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="'pretrain'.*warmup_epochs"):
        stage_rules.stage_tx(config, Stage(name="pretrain", epochs=4, optimizer={"warmup_epochs": 2,
                                                                                 "decay_start_epoch": 1}), 2, params)
