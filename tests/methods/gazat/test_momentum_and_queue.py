"""GazAT's momentum baselines (gazejax.models.ssl + methods/gazat): BYOL's cosine target momentum, MoCo's queue sized
from the data with each key's image index, shuffle-BN emulated over groups on one device, and the target / queue
under gradient accumulation (the target once per optimiser step, every micro-batch's keys enqueued)."""
from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import gazat as gazat_config
from gazejax.experiments.runner import apply_overrides
from gazejax.methods.gazat import cases, data as gazat_data, spec as gazat
from gazejax.models.ssl import SSLModel, Tower

TINY = dict(backbone="resnet18", backbone_kwargs={"in_channels": 1, "width": 2}, num_classes=3, proj_hidden=8,
            proj_dim=4, attention_layers=("layer2",), region_layer="layer4")


def _init(model, x):
    return jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), x, x, jnp.arange(x.shape[0]), train=False))()


def _images(n: int, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, 32, 32, 1)), jnp.float32)


@pytest.mark.slow
def test_byol_target_momentum_follows_the_cosine_schedule_to_one():
    model = SSLModel(**TINY, momentum=0.996, momentum_schedule="cosine", momentum_steps=4, predictor_hidden=8,
                     proj_bn=True)
    for k, want in ((0, 0.996), (1, 1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2), (2, 0.998), (4, 1.0), (9, 1.0)):
        assert float(model.momentum_at(jnp.asarray(k))) == pytest.approx(want, abs=1e-7), k
    x = _images(2)
    variables = _init(model, x)
    online = variables["params"]["online"]
    start = jax.tree.map(lambda p: p + 1.0, online)  # target != online, so the momentum shows in the result
    rest = {"batch_stats": variables["batch_stats"], "progress": variables["progress"],
            "target": {"params": start, "steps": variables["target"]["steps"]}}
    apply = jax.jit(lambda v: model.apply(v, x, x[::-1], train=True, mutable=list(rest)))
    _, new = apply({"params": variables["params"], **rest})
    _, new = apply({"params": variables["params"], **new})
    m0, m1 = float(model.momentum_at(jnp.asarray(0))), float(model.momentum_at(jnp.asarray(1)))
    want = jax.tree.map(lambda s, o: m1 * (m0 * s + (1 - m0) * o) + (1 - m1) * o, start, online)
    jax.tree.map(lambda t, w: np.testing.assert_allclose(t, w, rtol=1e-6, atol=1e-6), new["target"]["params"], want)
    assert int(new["target"]["steps"]) == 2 and int(new["progress"]["steps"]) == 2


def test_byol_schedule_spans_the_pretraining_steps_of_the_data():
    c = gazat_config.get_config("preset=paper,method=byol")
    assert (c.byol.momentum, c.byol.momentum_schedule, c.byol.total_steps) == (0.996, "cosine", 0)
    # 1831 training images (REFLACX's 2616 x 0.7), batch 128: 14 steps per epoch, 200 epochs
    assert cases.momentum_steps(c, num_train=1831) == 200 * 14


def _grouped_reference(model, variables, both, groups, perm=None):
    """Tower outputs over `groups` groups of `both[perm]` rows, each normalised on its own, put back in order."""
    rows = np.arange(both.shape[0]) if perm is None else np.asarray(perm)
    out = np.zeros((both.shape[0], model.proj_dim), np.float32)
    tower = Tower(**model._tower_fields())
    for g in np.split(rows, groups):
        z, _ = tower.apply(variables, both[g], True, mutable=["batch_stats"])
        out[g] = np.asarray(z["z"])
    return out


@pytest.mark.slow
def test_shuffle_bn_normalises_queries_and_keys_over_different_groups():
    model = SSLModel(**TINY, momentum=0.9, queue_size=8, bn_groups=2)
    x, x2 = _images(4, 1), _images(4, 2)
    variables = _init(model, x)
    rest = {k: v for k, v in variables.items() if k != "params"}
    ids = jnp.array([10, 11, 12, 13])
    out, new = jax.jit(lambda v: model.apply(v, x, x2, ids, train=True, mutable=list(rest)))(variables)
    both = jnp.concatenate([x, x2])
    online = {"params": variables["params"]["online"], "batch_stats": variables["batch_stats"]["online"]}
    queries = _grouped_reference(model, online, both, 2)  # consecutive groups: views a, then views g
    np.testing.assert_allclose(np.concatenate([out["z_a"], out["z_g"]]), queries, rtol=1e-3, atol=3e-4)
    # keys: target (= online here) over the groups of a random order (PRNGKey(0) without a dropout rng)
    perm = jax.random.permutation(jax.random.PRNGKey(0), 8)
    keys = _grouped_reference(model, {"params": variables["params"]["online"]}, both, 2, perm)
    np.testing.assert_allclose(np.concatenate([out["zt_a"], out["zt_g"]]), keys, rtol=1e-3, atol=3e-4)
    full = _grouped_reference(model, {"params": variables["params"]["online"]}, both, 1)
    assert np.abs(full - keys).max() > 1e-2  # one batch-norm group over all views would give other keys
    assert set(np.asarray(perm[:4]).tolist()) != {0, 1, 2, 3}  # the key groups are not the query groups
    np.testing.assert_array_equal(new["queue"]["ids"][:4], ids)  # keys of view g, with their images
    np.testing.assert_array_equal(new["queue"]["ids"][4:], -1)
    # the online running statistics are the mean of the two groups' updates
    stats = [Tower(**model._tower_fields()).apply(online, both[s], True, mutable=["batch_stats"])[1]
             for s in (slice(0, 4), slice(4, 8))]
    want = jax.tree.map(lambda a, b: (a + b) / 2, *(s["batch_stats"] for s in stats))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), new["batch_stats"]["online"],
                 want)


def test_moco_queue_is_sized_from_the_data_and_its_settings_fit_a_small_data_set(caplog):
    paper = gazat_config.get_config("preset=paper,method=moco")
    assert (paper.moco.queue_size, paper.moco.queue_share, paper.moco.momentum, paper.moco.bn_groups) == (
        0, 0.5, 0.99, 8)
    assert cases.queue_size(paper, num_train=1831) == 896  # 7 batches of 128 <= 915.5; 65,536 would be ~36 epochs
    assert cases.auto_queue_size(280, 32, 0.5) == 128 and cases.auto_queue_size(40, 32, 0.5) == 32
    explicit = apply_overrides(paper, {"moco.queue_size": 65536})
    assert cases.queue_size(explicit, num_train=1831) == 65536
    with caplog.at_level(logging.WARNING, logger="gazejax"):
        gazat_data._check_queue(explicit, 1831)
    assert "35.8 epochs of the 1831 training images" in caplog.text and "0 = 896" in caplog.text
    with pytest.raises(ValueError, match="bn_groups"):
        gazat.momentum_fields(apply_overrides(explicit, {"moco.bn_groups": 3}), "moco")


@pytest.mark.slow
def test_grad_accumulation_updates_the_target_once_and_enqueues_every_micro_batch(tmp_path):
    from gazejax import methods
    from gazejax.engine import parallel
    from gazejax.engine.trainer import Trainer

    c = gazat_config.get_config("method=moco")
    c.model.backbone, c.model.resnet_width, c.model.region_layer = "resnet18", 2, ""
    c.model.proj_hidden, c.model.proj_dim = 8, 4
    c.data.image_size = (32, 32)
    c.batch_size, c.grad_accum_steps, c.num_devices = 4, 2, 1
    c.moco.queue_size, c.moco.bn_groups, c.moco.momentum = 8, 2, 0.9
    c.checkpoint.async_save = False
    method = methods.get("gazat")
    if "target" not in method.per_step_collections:
        pytest.fail("Method.per_step_collections of gazat must list the momentum target")
    trainer = Trainer(c, str(tmp_path), method)
    try:
        variables = jax.device_get(trainer.init_variables())  # host copies: the step donates the state's buffers
        online = variables["params"]["online"]
        variables["target"]["params"] = jax.tree.map(lambda p: p + 1.0, online)
        state = trainer.new_state(variables, optax.sgd(0.0))  # params stay put: only the target moves
        step = trainer.make_train_step(optax.sgd(0.0))
        rng = np.random.default_rng(3)
        batch = {"view_a": rng.uniform(size=(4, 32, 32, 1)).astype(np.float32),
                 "view_g": rng.uniform(size=(4, 32, 32, 1)).astype(np.float32),
                 "index": np.array([5, 6, 7, 8], np.int32), "has_gaze": np.ones(4, bool)}
        state, _ = step(state, parallel.to_global(batch, trainer.mesh))
        target = jax.device_get(state.collections["target"])
        # once: o + 0.9 (target - o = 1 before); per micro-batch it would be o + 0.81
        jax.tree.map(lambda t, o: np.testing.assert_allclose(t, o + 0.9, rtol=1e-5, atol=1e-5), target["params"],
                     online)
        assert int(target["steps"]) == 1
        queue = jax.device_get(state.collections["queue"])
        assert int(queue["ptr"]) == 4 and sorted(queue["ids"][:4].tolist()) == [5, 6, 7, 8]
    finally:
        trainer.close()
