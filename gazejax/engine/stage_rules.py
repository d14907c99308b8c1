"""What a Stage asks of the train step beyond its loss: its optimiser (learning-rate schedule, trained and frozen
parameters, the plateau learning-rate scale), frozen sub-trees of the mutable collections, collections that
advance once per optimiser step under gradient accumulation, and the plateau bookkeeping after a validation.

The trainer calls these; they are pure functions of the config, the Stage, the Method and pytrees, so each rule
can be tested on its own.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from gazejax.engine import optim

log = logging.getLogger("gazejax")


def _optim_settings(config, stage) -> dict:
    opt = dict(config.optim.to_dict() if hasattr(config.optim, "to_dict") else config.optim)
    opt.update(dict(stage.optimizer))
    return opt


def stage_lr(config, stage) -> float:
    """The stage's base learning rate (config.optim.lr unless the stage overrides it)."""
    return float(_optim_settings(config, stage)["lr"])


def trained_filter(stage) -> optim.Predicate | None:
    """Predicate over "/"-joined parameter paths: in `stage.trainable` and not in `stage.frozen`; None = all."""
    if tuple(stage.trainable) == ("*",) and not stage.frozen:
        return None
    trainable = optim.path_filter(list(stage.trainable))
    frozen = optim.path_filter(list(stage.frozen)) if stage.frozen else (lambda path, leaf=None: False)
    return lambda path, leaf=None: trainable(path) and not frozen(path)


def stage_tx(config, stage, steps_per_epoch: int, params) -> optax.GradientTransformation:
    """The stage's optimiser: config.optim overridden by the stage, parameters outside `trainable` or inside
    `frozen` zeroed, and with `stage.plateau` the learning rate times a plateau scale kept in the state.

    Schedule keys (config.optim or the stage's optimizer overrides): `lr`, `warmup_epochs` (linear warm-up from
    lr / warmup_steps, default 0), `decay_start_epoch` (constant lr until then, then half a cosine; default: no
    decay) and `final_lr` (the cosine's end, default 0)."""
    opt = _optim_settings(config, stage)
    total = max(1, stage.epochs * steps_per_epoch)
    decay_epoch = opt.pop("decay_start_epoch", None)
    decay_start = min(total if decay_epoch is None else int(decay_epoch) * steps_per_epoch, total)
    warmup = int(opt.pop("warmup_epochs", 0) or 0) * steps_per_epoch
    if warmup > decay_start:
        raise ValueError(f"stage {stage.name!r}: optimizer warmup_epochs ({warmup // steps_per_epoch}) must not "
                         f"exceed decay_start_epoch or the stage's {stage.epochs} epochs")
    schedule = optim.warmup_cosine_after(opt.pop("lr"), total, decay_start,
                                         final_lr=opt.pop("final_lr", 0.0), warmup_steps=warmup)
    name, trained = opt.pop("name"), trained_filter(stage)

    def make_tx(lr_schedule) -> optax.GradientTransformation:
        tx = optim.make_optimizer(name, lr_schedule, **opt)
        return tx if trained is None else optim.freeze(tx, trained, params)

    if not stage.plateau:
        return make_tx(schedule)
    return optim.scale_lr_on_plateau(make_tx, schedule, mode=str(stage.plateau.get("mode", "min")))


def check_stage(stage, variables: dict) -> None:
    """One-line errors for settings that would silently do nothing: a frozen pattern matching no parameter or
    collection leaf, a plateau without a monitor."""
    for pattern in stage.frozen:
        match = optim.path_filter([pattern])
        if not any(match(optim.path_string(p)) for tree in variables.values()
                   for p, _ in jax.tree_util.tree_leaves_with_path(tree)):
            raise ValueError(f"stage {stage.name!r}: frozen pattern {pattern!r} matches no parameter or collection "
                             f"leaf (top-level names: {', '.join(sorted(variables.get('params', {})))})")
    if stage.plateau and not stage.plateau.get("monitor"):
        raise ValueError(f"stage {stage.name!r}: plateau needs a 'monitor' (a validation metric, e.g. 'val/loss')")


def keep_frozen(new: dict, old: dict, stage) -> tuple[dict, jax.Array]:
    """Collections `new` with every leaf under a `stage.frozen` pattern (path inside its collection, e.g.
    "features/norm0/mean" of batch_stats) taken from `old`, and the largest change the model made to those leaves
    (0 when the model ran the frozen sub-modules in inference mode, as it should)."""
    if not stage.frozen:
        return new, jnp.zeros((), jnp.float32)
    frozen = optim.path_filter(list(stage.frozen))
    drift = [jnp.zeros((), jnp.float32)]

    def pick(path, n, o):
        if not frozen(optim.path_string(path)):
            return n
        if jnp.issubdtype(jnp.asarray(n).dtype, jnp.inexact):
            drift.append(jnp.max(jnp.abs(n.astype(jnp.float32) - o.astype(jnp.float32)), initial=0.0))
        return o

    kept = {name: jax.tree_util.tree_map_with_path(pick, tree, old[name]) if name in old else tree
            for name, tree in new.items()}
    return kept, jnp.max(jnp.stack(drift))


def next_reads(start: dict, out: dict, per_step: tuple[str, ...]) -> dict:
    """The collections the next micro-batch of an accumulated step reads, given the last one's output `out`.

    Collections named in `per_step` (a momentum encoder's EMA, ...) advance once per optimiser step: every
    micro-batch reads their step-start value from `start`, and the step ends with the last micro-batch's update
    (for an EMA every micro-batch computes the same one, so the step applies m once, not m^k). All other
    collections (BatchNorm statistics, a MoCo queue, which must enqueue every micro-batch's keys) advance
    sequentially, micro-batch after micro-batch. Names the model does not have are ignored (a method family
    whose baselines lack a momentum encoder declares it once).
    """
    return {k: (start[k] if k in per_step else v) for k, v in out.items()}


def plateau_after_validation(config, stage, state, val_metrics: dict, replicate: Callable[[Any], Any]) -> Any:
    """One plateau step on the stage's monitored validation metric; returns the state with the new scale."""
    key = str(stage.plateau["monitor"])
    metrics = {f"val/{k}": v for k, v in val_metrics.items()}
    if key not in metrics:
        raise ValueError(f"stage {stage.name!r}: plateau monitor {key!r} is not a validation metric; "
                         f"validation gives {', '.join(sorted(metrics))}")
    settings = {k: v for k, v in stage.plateau.items() if k != "monitor"}
    plateau, dropped = optim.plateau_step(state.opt_state, metrics[key], stage_lr(config, stage), **settings)
    if dropped:
        log.info("stage %s: %s stopped improving; learning rate scale now %.4g", stage.name, key,
                 float(plateau.lr_scale))
    fields = {k: replicate(getattr(plateau, k)) for k in ("lr_scale", "best", "num_bad", "cooldown")}
    return state.replace(opt_state=state.opt_state._replace(**fields))
