"""Optimizers (Ranger = gradient centralisation + RAdam + Lookahead, Adam/AdamW/SGD), schedules, stage freezing and
the plateau learning-rate scale (torch's ReduceLROnPlateau).

Ranger follows lessw2020's Ranger (version 20.4.11, the one open_brats2020 trains with) step for step. Its
Lookahead keeps a plain params pytree: the slow weights live in the optimizer state and the sync step is expressed
as an update, so Ranger needs `params` in `update()` (the trainer always passes them).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any
Predicate = Callable[[str, Any], bool]


def _centralize_leaf(g: jax.Array) -> jax.Array:
    if g.ndim <= 1:
        return g
    # Flax kernels are (..., in, out): keep the LAST (output) axis; torch's (out, in, ...) keeps axis 0 instead.
    return g - jnp.mean(g, axis=tuple(range(g.ndim - 1)), keepdims=True)


def centralize_last_axis() -> optax.GradientTransformation:
    """Gradient centralisation (Yong et al., 2020) for Flax layouts: subtract the mean over every axis but the last.

    Applied to leaves with ndim > 1 only (conv and dense kernels; biases and norm scales are left alone), as
    Ranger's `use_gc=True, gc_conv_only=False`. `optax.centralize` keeps axis 0, which is wrong for Flax kernels.
    """

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(_centralize_leaf, updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


class RangerRAdamState(NamedTuple):
    count: jax.Array  # int32 step counter (t - 1 before the update)
    mu: PyTree  # first moment, float32
    nu: PyTree  # second moment, float32


def _one_minus_pow(beta: float, t: jax.Array) -> jax.Array:
    """1 - beta^t without float32 cancellation (beta is a Python float, its log is taken in float64)."""
    return -jnp.expm1(t * math.log(beta))


def _n_sma(b2: float, t: jax.Array) -> jax.Array:
    """RAdam's rho_t = rho_inf - 2 t b2^t / (1 - b2^t) (Liu et al., 2020), accurate in float32.

    The textbook form subtracts two numbers near rho_inf (~2000 for b2 = 0.999) and loses ~1e-4 in float32, close
    to the threshold. With u = -ln b2 and z = t u: 2 t b2^t / (1 - b2^t) = (2 / u) (1 - h(z)), h(z) = 1 - z /
    expm1(z), so rho_t = [rho_inf - 2 / u] + (2 / u) h(z) with the bracket taken in float64 and h by its series.
    """
    u = -math.log(b2)
    offset = (2.0 / (1.0 - b2) - 1.0) - 2.0 / u
    z = t * u
    # Bernoulli series of h; below z = 0.5 it beats the direct form's cancellation (next term z^10 / 47900160).
    series = z / 2 - z**2 / 12 + z**4 / 720 - z**6 / 30240 + z**8 / 1209600
    direct = 1.0 - z / jnp.expm1(jnp.maximum(z, 0.5))
    return offset + (2.0 / u) * jnp.where(z < 0.5, series, direct)


def scale_by_ranger_radam(
    b1: float = 0.95, b2: float = 0.999, eps: float = 1e-5, threshold: float = 5.0
) -> optax.GradientTransformation:
    """RAdam direction exactly as Ranger computes it (before the learning rate and the sign flip).

    With rho_t as in `_n_sma`:
      rho_t >  threshold: r_t * sqrt(1 - b2^t) / (1 - b1^t) * m_t / (sqrt(v_t) + eps),
      rho_t <= threshold: m_t / (1 - b1^t)   (bias-corrected momentum, no adaptive denominator).
    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t)).

    Differences from `optax.scale_by_radam`, all deliberate to match Ranger: the test is rho_t > 5 (optax: >= 5);
    eps is added to sqrt(v_t), not to the bias-corrected sqrt(v_t / (1 - b2^t)) (so Ranger's effective eps is
    eps / sqrt(1 - b2^t), ~30x larger at t = 1); defaults b1 0.95, eps 1e-5. With b2 = 0.999 both switch to the
    rectified step at t = 6 (rho_5 = 4.996, rho_6 = 5.994). Moments are float32 whatever the param dtype.
    """
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def init_fn(params):
        zeros = lambda p: jnp.zeros(jnp.shape(p), jnp.float32)
        return RangerRAdamState(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params), jax.tree.map(zeros, params))

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g.astype(jnp.float32), state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g.astype(jnp.float32)), state.nu, updates)
        count = optax.safe_increment(state.count)
        t = count.astype(jnp.float32)
        rho = _n_sma(b2, t)
        rectified = rho > threshold
        bias1 = _one_minus_pow(b1, t)
        ratio = jnp.maximum((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho), 0.0)
        rect_size = jnp.sqrt(_one_minus_pow(b2, t) * ratio) / bias1

        def direction(m, v, g):
            adaptive = rect_size * m / (jnp.sqrt(v) + eps)
            return jnp.where(rectified, adaptive, m / bias1).astype(g.dtype)

        return jax.tree.map(direction, mu, nu, updates), RangerRAdamState(count, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


class LookaheadState(NamedTuple):
    count: jax.Array  # int32 fast steps taken
    slow: PyTree  # slow weights, in the params' dtype


def lookahead_plain(k: int = 6, alpha: float = 0.5) -> optax.GradientTransformation:
    """Lookahead (Zhang et al., 2019) on a plain params pytree; chain it LAST, after the learning rate.

    Every step the incoming (fast) update passes through, except every k-th step, where the fast weights
    `params + updates` are pulled to slow_new = slow + alpha (fast - slow) and the update becomes `slow_new -
    params`, so the applied params equal the new slow weights (Ranger's `p.data.copy_(slow_p)`, here up to one
    rounding of `params + (slow_new - params)`). Slow weights start at the initial params. Requires `params`.
    """
    if k < 1 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"lookahead_plain: need k >= 1 and 0 <= alpha <= 1, got k={k}, alpha={alpha}")

    def init_fn(params):
        # A real copy: the slow weights must not alias the params' buffers (donation in the train step).
        return LookaheadState(jnp.zeros([], jnp.int32), jax.tree.map(lambda p: jnp.array(p, copy=True), params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("lookahead_plain: update() needs params (call tx.update(grads, opt_state, params))")
        count = optax.safe_increment(state.count)
        sync = count % k == 0

        f32 = lambda x: x.astype(jnp.float32)
        # slow + alpha (fast - slow) with fast = params + updates; only used on sync steps.
        pulled = jax.tree.map(lambda s, p, u: f32(s) + alpha * (f32(p) + f32(u) - f32(s)), state.slow, params, updates)
        new_updates = jax.tree.map(
            lambda u, t, p: jnp.where(sync, t - f32(p), f32(u)).astype(u.dtype), updates, pulled, params
        )
        slow = jax.tree.map(lambda t, s: jnp.where(sync, t, f32(s)).astype(s.dtype), pulled, state.slow)
        return new_updates, LookaheadState(count, slow)

    return optax.GradientTransformation(init_fn, update_fn)


def ranger(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.95,
    b2: float = 0.999,
    eps: float = 1e-5,
    weight_decay: float = 0.0,
    k: int = 6,
    alpha: float = 0.5,
    centralize: bool = True,
    threshold: float = 5.0,
) -> optax.GradientTransformation:
    """Ranger (lessw2020, 20.4.11): gradient centralisation -> RAdam -> weight decay -> lr -> Lookahead.

    Defaults are Ranger's (lr aside): betas (0.95, 0.999), eps 1e-5, N_sma_threshhold 5, k 6, alpha 0.5,
    use_gc True on conv and dense kernels. Weight decay as Ranger: p -= wd * lr * p (decoupled, on the fast weights,
    before the RAdam step). open_brats2020 uses lr 1e-4 and weight decay 0. Needs `params` in `update()`.
    """
    return optax.chain(
        centralize_last_axis() if centralize else optax.identity(),
        scale_by_ranger_radam(b1=b1, b2=b2, eps=eps, threshold=threshold),
        optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
        optax.scale_by_learning_rate(learning_rate),
        lookahead_plain(k=k, alpha=alpha),
    )


def warmup_cosine_after(
    base_lr: float, total_steps: int, decay_start_step: int, final_lr: float = 0.0, warmup_steps: int = 0
) -> optax.Schedule:
    """Constant `base_lr` until `decay_start_step`, then half a cosine down to `final_lr` at `total_steps`.

    This is open_brats2020's Ranger schedule (CosineAnnealingLR stepped only in the second half of training; the
    paper: lr 1e-4, cosine after epoch 100 of 210). Optional linear warm-up as open_brats2020's non-Ranger runs:
    lr = base_lr (step + 1) / warmup_steps for step < warmup_steps.
    """
    if not 0 <= warmup_steps <= decay_start_step <= total_steps:
        raise ValueError(
            "warmup_cosine_after: need 0 <= warmup_steps <= decay_start_step <= total_steps, got "
            f"{warmup_steps}, {decay_start_step}, {total_steps}"
        )
    decay_steps = max(total_steps - decay_start_step, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        progress = jnp.clip((step - decay_start_step) / decay_steps, 0.0, 1.0)
        lr = final_lr + (base_lr - final_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        if warmup_steps:
            lr = jnp.where(step < warmup_steps, base_lr * (step + 1) / warmup_steps, lr)
        return lr

    return schedule


def _l2_then(weight_decay: float, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """torch-style coupled L2: the gradient gets + wd * p before the optimizer sees it (torch Adam/SGD)."""
    return optax.chain(optax.add_decayed_weights(weight_decay), tx) if weight_decay else tx


def make_optimizer(name: str, schedule: optax.ScalarOrSchedule, **kw) -> optax.GradientTransformation:
    """Optimizer by name with open_brats2020's settings as defaults; `kw` overrides them.

    - "ranger": `ranger(schedule, **kw)`.
    - "adam": torch Adam as open_brats2020 builds it: eps 1e-4, `weight_decay` (default 0) as coupled L2.
    - "adamw": torch AdamW defaults (weight_decay 1e-2, eps 1e-8; optax's own default decay is 1e-4).
    - "sgd": momentum 0.9, Nesterov, `weight_decay` (default 0) as coupled L2.
    """
    if name == "ranger":
        return ranger(schedule, **kw)
    if name == "adam":
        weight_decay = kw.pop("weight_decay", 0.0)
        return _l2_then(weight_decay, optax.adam(schedule, **{"eps": 1e-4, **kw}))
    if name == "adamw":
        return optax.adamw(schedule, **{"weight_decay": 1e-2, **kw})
    if name == "sgd":
        weight_decay = kw.pop("weight_decay", 0.0)
        return _l2_then(weight_decay, optax.sgd(schedule, **{"momentum": 0.9, "nesterov": True, **kw}))
    raise ValueError(f"make_optimizer: unknown optimizer {name!r}; known: ranger, adam, adamw, sgd")


def path_string(path: Sequence[Any]) -> str:
    """A jax key path as a "/"-joined string, e.g. "encoder/encoder1/conv1/kernel"."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def path_filter(patterns: Sequence[str]) -> Predicate:
    """Predicate (path, leaf) -> True when the "/"-joined path matches any pattern.

    Plain patterns are globs matched against the whole path (`fnmatch`, where `*` also crosses "/":
    "encoder/*" is everything under encoder); patterns starting with "re:" are regular expressions searched in the
    path ("re:^head/|/bias$"). Negate it for "everything but": `lambda p, x: not f(p, x)`.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    regexes = [re.compile(p[3:]) for p in patterns if p.startswith("re:")]
    globs = [p for p in patterns if not p.startswith("re:")]

    def predicate(path: str, leaf: Any = None) -> bool:
        del leaf
        return any(fnmatch.fnmatchcase(path, g) for g in globs) or any(r.search(path) for r in regexes)

    return predicate


def freeze(
    tx: optax.GradientTransformation, trainable: PyTree | Predicate, params: PyTree | None = None
) -> optax.GradientTransformation:
    """`tx` on the trainable leaves and `optax.set_to_zero` on the rest, via `optax.multi_transform`.

    Frozen leaves get zero updates (bit-identical params, no weight decay, no Lookahead pull) and no optimizer state.

    Args:
      tx: the optimizer of the trainable leaves.
      trainable: a pytree of bools shaped like params, or a predicate `(path, leaf) -> bool` over "/"-joined paths
        (see `path_filter`).
      params: when given, the labels are built now (and a bool pytree is checked against it); otherwise they are
        built from the params passed to `init`.
    """

    def labels(tree: PyTree) -> PyTree:
        if callable(trainable):
            flags = jax.tree_util.tree_map_with_path(lambda p, x: bool(trainable(path_string(p), x)), tree)
        else:
            if jax.tree.structure(trainable) != jax.tree.structure(tree):
                raise ValueError("freeze: the `trainable` pytree does not have the structure of the params")
            flags = trainable
        return jax.tree.map(lambda flag: "trainable" if flag else "frozen", flags)

    return optax.multi_transform(
        {"trainable": tx, "frozen": optax.set_to_zero()}, labels(params) if params is not None else labels
    )


class PlateauState(NamedTuple):
    """State of `scale_lr_on_plateau`: the learning-rate scale, torch ReduceLROnPlateau's counters, the inner state."""

    lr_scale: jax.Array  # float32, multiplies the inner optimiser's learning rate (1 until the first drop)
    best: jax.Array  # float32, best monitored value so far (+inf in mode "min", -inf in "max" before the first)
    num_bad: jax.Array  # int32, evaluations since the last improvement
    cooldown: jax.Array  # int32, evaluations of cooldown left after a drop
    inner: PyTree  # the inner optimiser's state (Adam's moments, ...): a drop leaves it alone


PLATEAU_DEFAULTS = {"mode": "min", "factor": 0.1, "patience": 10, "threshold": 1e-4, "threshold_mode": "rel",
                    "cooldown": 0, "min_lr": 0.0, "eps": 1e-8}  # torch.optim.lr_scheduler.ReduceLROnPlateau's


def scale_lr_on_plateau(make_tx: Callable[[optax.Schedule], optax.GradientTransformation], schedule: optax.Schedule,
                        mode: str = "min") -> optax.GradientTransformation:
    """`make_tx(schedule)` whose learning rate is `schedule(step) * lr_scale`, `lr_scale` kept in the state.

    The scale is the only thing a plateau drop changes (`plateau_step`, called on the host after a validation):
    the inner state (moments, step counts, Lookahead's slow weights) is untouched, exactly as torch's
    ReduceLROnPlateau only rewrites `param_group["lr"]`. Because the scale multiplies the learning rate (not the
    final update), Lookahead's sync step is not scaled. Everything lives in the optimiser state, so a checkpoint
    carries it and a resumed run continues with the reduced rate.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"scale_lr_on_plateau: mode must be 'min' or 'max', got {mode!r}")

    def init_fn(params):
        worst = jnp.inf if mode == "min" else -jnp.inf
        return PlateauState(jnp.ones([], jnp.float32), jnp.full([], worst, jnp.float32), jnp.zeros([], jnp.int32),
                            jnp.zeros([], jnp.int32), make_tx(schedule).init(params))

    def update_fn(updates, state, params=None):
        tx = make_tx(lambda step: schedule(step) * state.lr_scale)
        updates, inner = tx.update(updates, state.inner, params)
        return updates, state._replace(inner=inner)

    return optax.GradientTransformation(init_fn, update_fn)


def plateau_step(state: PlateauState, value: float, base_lr: float, **settings) -> tuple[PlateauState, bool]:
    """One `ReduceLROnPlateau.step(value)` of torch (2.x) on a `PlateauState`; returns (state, whether it dropped).

    Settings (`PLATEAU_DEFAULTS`, torch's defaults): in mode "min" with threshold_mode "rel" a value improves when
    value < best * (1 - threshold) ("max": value > best * (1 + threshold); "abs": best -/+ threshold); otherwise
    the bad-evaluation count grows, a cooldown evaluation resets it, and when it exceeds `patience` the learning
    rate becomes max(lr * factor, min_lr), applied only if it falls by more than `eps` (torch's absolute eps), then
    the cooldown restarts and the count resets. lr = base_lr * lr_scale, so `min_lr` and `eps` are learning rates
    as in torch (a schedule on top scales them along). A NaN value never improves. Host-side Python (float64
    arithmetic on the float32 state); `best` is stored in float32 (a relative rounding of 6e-8, far below the
    1e-4 threshold).
    """
    unknown = set(settings) - set(PLATEAU_DEFAULTS) - {"monitor"}
    if unknown:
        raise ValueError(f"plateau: unknown setting(s) {sorted(unknown)}; known: monitor, "
                         f"{', '.join(PLATEAU_DEFAULTS)}")
    s = {**PLATEAU_DEFAULTS, **settings}
    if s["mode"] not in ("min", "max") or s["threshold_mode"] not in ("rel", "abs"):
        raise ValueError(f"plateau: mode must be min|max and threshold_mode rel|abs, got {s['mode']!r}, "
                         f"{s['threshold_mode']!r}")
    read = lambda x: np.asarray(x.addressable_data(0) if hasattr(x, "addressable_data") else x).item()  # noqa: E731
    scale, best, bad, cooldown = (read(x) for x in (state.lr_scale, state.best, state.num_bad, state.cooldown))
    value, threshold, low = float(value), float(s["threshold"]), s["mode"] == "min"
    if s["threshold_mode"] == "rel":
        better = value < best * (1.0 - threshold) if low else value > best * (1.0 + threshold)
    else:
        better = value < best - threshold if low else value > best + threshold
    best, bad = (value, 0) if better else (best, bad + 1)
    if cooldown > 0:
        cooldown, bad = cooldown - 1, 0
    dropped = False
    if bad > int(s["patience"]):
        old = base_lr * scale
        new = max(old * float(s["factor"]), float(s["min_lr"]))
        if old - new > float(s["eps"]):
            scale, dropped = new / base_lr, True
        cooldown, bad = int(s["cooldown"]), 0
    as_like = lambda x, v: np.asarray(v, dtype=x.dtype)  # noqa: E731
    return state._replace(lr_scale=as_like(state.lr_scale, scale), best=as_like(state.best, best),
                          num_bad=as_like(state.num_bad, bad), cooldown=as_like(state.cooldown, cooldown)), dropped
