"""GG-CAM's start values of Eq. 11's sigmas: Table 1's EfficientNet sigma_sm = 1.4e-11 (e^-25) overflows optax
Adam's float32 second moment, so the paper preset starts at the reference code's e^-16 and the method refuses, at
start-up, any start value whose weighted loss or squared gradient would overflow the compute dtype."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import ggcam as ggcam_config
from gazejax.methods.ggcam import losses as ggcam_losses, spec as ggcam


def _adam_second_moment(sigma_sm: float, l_sm: float = 1.0) -> float:
    """optax Adam's second moment of log sigma_sm after one step of Eq. 11 with L_sm = l_sm, L_ce = ln 3."""
    params = {"log_sigma_sm": jnp.float32(math.log(sigma_sm)), "log_sigma_ce": jnp.float32(0.0)}
    grads = jax.grad(lambda p: ggcam_losses.ggcam_total(math.log(3.0), l_sm, p["log_sigma_ce"],
                                                        p["log_sigma_sm"]))(params)
    tx = optax.adam(6e-3, eps=1e-8)
    _, state = tx.update(grads, tx.init(params), params)
    return float(state[0].nu["log_sigma_sm"])


def _passes(sigma_sm: float, sigma_ce: float = 1.0, dtype=jnp.float32) -> bool:
    try:
        ggcam_losses.check_sigma_start(sigma_sm, sigma_ce, dtype)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("sigma_sm", [math.exp(-25), 1.4e-11, 2.2e-10, 2.45e-10, 2e-9, math.exp(-16), 0.1])
def test_check_agrees_with_optax_adam_at_the_worst_case_loss(sigma_sm):
    """At L_sm = 1 (its maximum) the check passes exactly when Adam's float32 second moment stays finite; the
    threshold is sigma_sm = float32 max ** -1/4 = 2.33e-10."""
    assert _passes(sigma_sm) == np.isfinite(_adam_second_moment(sigma_sm))


def test_table1_effnet_value_overflows_adam_at_ordinary_losses():
    assert not np.isfinite(_adam_second_moment(1.4e-11, l_sm=0.01))  # (L_sm e^50)^2 > 3.4e38 once L_sm > 3.6e-3
    assert np.isfinite(_adam_second_moment(1.4e-11, l_sm=0.003))
    assert np.isfinite(_adam_second_moment(math.exp(-16), l_sm=1.0))


def test_paper_preset_starts_effnet_at_exp_minus_16_and_refuses_table1_value():
    c = ggcam_config.get_config("preset=paper,backbone=efficientnet_v2_s,method=ggcam")
    assert c.table1.efficientnet_ggcam.sigma_sm == math.exp(-16.0)
    assert c.table1.resnet_ggcam.sigma_sm == 2.0e-9  # Table 1's ResNet value trains: kept
    assert ggcam.build_model(c).sigma_sm_init == math.exp(-16.0)
    c.table1.efficientnet_ggcam.sigma_sm = 1.4e-11
    with pytest.raises(ValueError, match=r"table1\.efficientnet_ggcam\.sigma_sm = 1\.4e-11 overflows float32"):
        ggcam.build_model(c)
    c.table1.efficientnet_ggcam.sigma_sm = math.exp(-16.0)
    c.model.sigma_ce_init = 1e-12
    with pytest.raises(ValueError, match=r"model\.sigma_ce_init"):
        ggcam.build_model(c)
    c.model.sigma_ce_init, c.model.dtype = 1.0, "float16"  # e^-16 weights L_sm by 4e13 > float16's 65504
    with pytest.raises(ValueError, match="overflows float16"):
        ggcam.build_model(c)
    c.method = "plain"  # no sigmas: nothing to check
    ggcam.build_model(c)


@pytest.mark.slow
def test_paper_effnet_start_trains_with_finite_adam_moments(fast_compile):
    """A few jitted Adam steps of the real loss on a narrow EfficientNetV2-S with the paper preset's sigma_sm:
    every second moment finite and log sigma_sm moving (Table 1's e^-25 gives inf moments here)."""
    c = ggcam_config.get_config("preset=paper,backbone=efficientnet_v2_s,method=ggcam")
    c.data.image_size, c.data.gaze_grids = (64, 64), {"cam": (2, 2)}
    c.model.efficientnet_width_mult, c.model.efficientnet_depth_mult = 0.25, 0.25
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.random((2, 64, 64, 1)), jnp.float32), "label": jnp.asarray([1, 2]),
             "label_mask": jnp.ones(2, bool), "has_gaze": jnp.ones(2, bool),
             "gaze_cam": jnp.asarray(rng.random((2, 2, 2, 1)), jnp.float32)}
    model = ggcam.build_model(c)
    variables = jax.jit(model.init)(jax.random.key(0), batch["image"])
    tx = optax.adam(float(c.table1.efficientnet_ggcam.lr), eps=float(c.optim.eps))

    def step(params, stats, opt, key):
        def loss(p):
            out, new = model.apply({"params": p, "batch_stats": stats}, batch["image"], train=True,
                                   mutable=["batch_stats"], rngs={"dropout": key})
            return ggcam.loss_fn(out, batch, p, c)[0], new["batch_stats"]
        (_, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), stats, opt

    step = jax.jit(step)
    for sigma_sm, expect_finite in ((c.table1.efficientnet_ggcam.sigma_sm, True), (1.4e-11, False)):
        params = {**variables["params"], "log_sigma_sm": jnp.float32(math.log(sigma_sm))}  # the start value
        stats, opt = variables["batch_stats"], tx.init(params)
        for t in range(3):
            params, stats, opt = step(params, stats, opt, jax.random.key(t))
        finite = all(bool(np.isfinite(np.asarray(v)).all()) for v in jax.tree.leaves(opt[0].nu))
        assert finite == expect_finite, sigma_sm
        if expect_finite:
            assert abs(float(params["log_sigma_sm"]) - math.log(sigma_sm)) > 1e-3  # log sigma_sm moves
