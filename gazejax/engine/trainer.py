"""The one trainer: state init, sharded train/eval steps, stages, checkpoints, logs and the final evaluation.

`train_and_evaluate(config, workdir, method)` runs a method (see `gazejax.engine.api.Method`) end to end. Every method
uses this loop; what differs between methods is data (the DataBundle), the model, the loss and the stage list.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gazejax.data import io
from gazejax.engine import input as train_data
from gazejax.engine import guards, model_dir, optim, parallel, predictor, profiling, stage_rules
from gazejax.engine.api import Method
from gazejax.engine.checkpoint import (Checkpointer, CorruptCheckpointError, PreemptionFlag, abstract_like,
                                       check_path)
from gazejax.engine.logs import MetricWriter, ProgressBar
from gazejax.engine.pretrained import load_pretrained_into
from gazejax.engine import workdir as workdirs
from gazejax.engine.workdir import WorkdirLock

log = logging.getLogger("gazejax")


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN/Inf; the last good checkpoint is kept."""


class Preempted(RuntimeError):
    """Raised after SIGTERM once a checkpoint has been written."""


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. Collections holds non-param variables (e.g. batch_stats)."""

    step: jax.Array
    params: Any
    collections: Any
    opt_state: Any
    rng: jax.Array


_stage_tx = stage_rules.stage_tx  # the stage's optimiser (kept under this name for callers of the trainer)


class Trainer:
    """Holds the mesh, model, jitted steps and checkpointing for one run."""

    def __init__(self, config, workdir: str, method: Method):
        self.config, self.workdir, self.method = config, workdir, method
        self.mesh = parallel.mesh_from_config(config)
        self.grad_accum_steps = int(config.get("grad_accum_steps", 1) or 1)
        rows = parallel.data_size(self.mesh)  # the batch is split over the data axis (every device on a 1-D mesh)
        per_device = config.batch_size // rows
        if self.grad_accum_steps < 1 or per_device % self.grad_accum_steps:
            raise ValueError(f"grad_accum_steps={self.grad_accum_steps} must divide the per-device batch "
                             f"{per_device} (batch_size {config.batch_size} over {rows} devices)")
        self.model = self.method.build_model(config)
        if parallel.spatial_size(self.mesh) > 1:  # volumes split over `spatial`: the inputs must allow it
            parallel.check_spatial_inputs(self.method.model_inputs(self.method.init_batch(config)), self.mesh)
        self.stages = self.method.stages(config)
        self.ckpt = Checkpointer(workdir, keep_last=config.checkpoint.keep,
                                 async_save=config.checkpoint.get("async_save", True))
        self.writer = MetricWriter(workdir)
        self.saved_config = workdirs.read_config(workdir)  # of the run that wrote the checkpoints, if any
        self.train_seconds = 0.0  # wall time of the training steps (with validation), summed over resumed runs
        self._predict_jit = predictor.jitted_apply(self.model, self.mesh, self.compiler_options)

    @property
    def compiler_options(self) -> dict:
        """`jax.jit`'s options for every function tracing the model (XLA:CPU's oneDNN convolutions under conv_impl
        "onednn"; none under `conv_impl.counting`)."""
        return predictor.compiler_options(self.config)

    def close(self, after_error: bool = False) -> None:
        """Waits for pending checkpoint writes and closes the log files. `after_error`: the run is stopping on an
        error, which a failure to close (e.g. the full disk that caused it) must not replace: logged instead."""
        failure = None
        parts = (("the TensorBoard / metrics writer", self.writer.close), ("the checkpoints", self.ckpt.close))
        for part, close in parts:
            try:
                close()
            except Exception as e:  # noqa: BLE001
                if not after_error:
                    failure = failure or e
                else:
                    log.warning("closing %s after the error below failed too: %s", part, " ".join(str(e).split()))
        if failure is not None:
            raise failure

    # ---- state -------------------------------------------------------------------------------------------
    def init_variables(self) -> dict:
        batch = self.method.init_batch(self.config)
        # The rbg generator: jit-compiling dozens of threefry-based initialisers takes minutes on XLA:CPU.
        rng = jax.random.key(self.config.seed, impl="rbg")
        init = jax.jit(lambda r, *x: self.model.init(r, *x, train=False),
                       out_shardings=parallel.replicated(self.mesh), compiler_options=self.compiler_options)
        variables = flax.core.unfreeze(init(rng, *self.method.model_inputs(batch)))
        init_from = self.config.model.get("init_from", "")
        if init_from:
            variables = load_pretrained_into(variables, init_from)
            variables = parallel.replicate(variables, self.mesh)
        return variables

    def new_state(self, variables: dict, tx) -> TrainState:
        params = variables["params"]
        collections = {k: v for k, v in variables.items() if k != "params"}
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, collections=collections,
                           opt_state=tx.init(params), rng=jax.random.PRNGKey(self.config.seed + 1))
        return parallel.replicate(state, self.mesh)

    # ---- steps -------------------------------------------------------------------------------------------
    def make_train_step(self, tx, stage=None) -> Callable:
        """The jitted step `(state, batch) -> (state, metrics)`. With `config.grad_accum_steps = k > 1` the batch is
        cut into k interleaved micro-batches whose gradients are averaged in a `lax.scan` (one optimiser update,
        1/k of the activation memory); equal to the full batch for losses that are per-example means, not for
        batch-coupled ones (contrastive losses, BatchNorm statistics, which run sequentially per micro-batch).
        `Method.per_step_collections` advance once per step instead (`stage_rules.next_reads`); the stage's
        frozen sub-trees keep their collection values (`stage_rules.keep_frozen`)."""
        model, method, config = self.model, self.method, self.config
        accum, per_step = self.grad_accum_steps, tuple(method.per_step_collections)
        apply_kwargs = dict(method.apply_kwargs(stage))

        def loss_of(params, collections, batch, dropout_rng):
            mutable = list(collections.keys())
            variables = {"params": params, **collections}
            out = model.apply(variables, *method.model_inputs(batch), train=True,
                              mutable=mutable or False, rngs={"dropout": dropout_rng}, **apply_kwargs)
            outputs, new_collections = out if mutable else (out, collections)
            loss, metrics = method.loss_fn(outputs, batch, params, config, stage=stage)
            return loss, (dict(metrics, loss=loss), new_collections)

        def grads_of(params, collections, batch, dropout_rng):
            (_, aux), grads = jax.value_and_grad(
                lambda p: loss_of(p, collections, batch, dropout_rng), has_aux=True)(params)
            return grads, aux

        def micro_batches(x):  # [B, ...] -> [k, B / k, ...], micro-batch i = rows i, i + k, ... (device-local)
            y = jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)
            spec = jax.sharding.PartitionSpec(None, *parallel.batch_spec(self.mesh, x.shape))
            return jax.lax.with_sharding_constraint(y, jax.sharding.NamedSharding(self.mesh, spec))

        def train_step(state: TrainState, batch: dict):
            rng, dropout_rng = jax.random.split(state.rng)
            if accum == 1:
                grads, (metrics, new_collections) = grads_of(state.params, state.collections, batch, dropout_rng)
            else:
                def body(carry, xs):
                    grad_sum, reads, _ = carry
                    grads, (metrics, out) = grads_of(state.params, reads, *xs)
                    reads = stage_rules.next_reads(state.collections, out, per_step)
                    return (jax.tree.map(jnp.add, grad_sum, grads), reads, out), metrics

                init = (jax.tree.map(jnp.zeros_like, state.params), state.collections, state.collections)
                xs = (jax.tree.map(micro_batches, batch), jax.random.split(dropout_rng, accum))
                (grad_sum, _, new_collections), per_micro = jax.lax.scan(body, init, xs)
                grads = jax.tree.map(lambda g: g / accum, grad_sum)
                metrics = jax.tree.map(lambda m: m.mean(0), per_micro)
            if stage is not None and stage.frozen:
                new_collections, metrics["frozen_stats_drift"] = stage_rules.keep_frozen(
                    new_collections, state.collections, stage)
            if isinstance(state.opt_state, optim.PlateauState):
                metrics["lr_scale"] = state.opt_state.lr_scale
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
            new_state = state.replace(step=state.step + 1, params=params, collections=new_collections,
                                      opt_state=opt_state, rng=rng)
            return new_state, metrics

        replicated, sharded = parallel.replicated(self.mesh), parallel.batch_sharded(self.mesh)
        self.state_check = parallel.on_mesh(guards.make_state_check(lambda *a: loss_of(*a)[0], replicated,
                                                                            self.compiler_options), self.mesh)
        if parallel.spatial_size(self.mesh) > 1:  # batch leaves keep their own (per-leaf) shardings from to_global
            return parallel.on_mesh(jax.jit(train_step, out_shardings=(replicated, replicated), donate_argnums=(0,),
                                            compiler_options=self.compiler_options), self.mesh)
        return jax.jit(train_step, in_shardings=(replicated, sharded), out_shardings=(replicated, replicated),
                       donate_argnums=(0,), compiler_options=self.compiler_options)

    def predict_fn(self, state: TrainState) -> Callable:
        """numpy inputs [B, ...] -> numpy outputs (`gazejax.engine.predictor.bind`)."""
        return predictor.bind(self._predict_jit, {"params": state.params, **state.collections}, self.mesh)

    # ---- data --------------------------------------------------------------------------------------------
    def train_iterator(self, data, stage, data_state: dict | None) -> train_data.TrainIterator:
        train, _, augment = data.train_set(stage.train_set)
        return train_data.train_iterator(self.config, train, augment,
                                         parallel.local_batch_size(self.config.batch_size, self.mesh), stage.epochs,
                                         data_state, where=self.workdir)

    # ---- evaluation --------------------------------------------------------------------------------------
    def evaluate_split(self, state: TrainState, data, split: str, out_dir: str | None = None, stage=None) -> dict:
        if split not in data.splits or data.splits[split] is None:
            return {"metrics": {}}
        stage = self.stages[-1] if stage is None else stage
        return self.method.evaluate(self.predict_fn(state), data.splits[split], self.config, out_dir, stage=stage)

    def steps_per_epoch(self, data, stage) -> int:
        """Full batches per epoch (the remainder is dropped). A training set smaller than one batch is an error:
        it would give an epoch of no steps."""
        n = int(data.train_set(stage.train_set)[1])
        if n < self.config.batch_size:
            raise ValueError(f"stage {stage.name!r}: training set {stage.train_set!r} has {n} examples, fewer than "
                             f"batch_size={self.config.batch_size}; lower batch_size or add data")
        return n // self.config.batch_size

    def source_stage(self, idx: int) -> int | None:
        """Index of the stage whose best checkpoint stage `idx` starts from (None = fresh initialisation)."""
        src = self.stages[idx].init_from
        if src is None:
            return idx - 1 if idx > 0 else None
        if src == "init":
            return None
        names = [s.name for s in self.stages[:idx]]
        if src not in names:
            raise ValueError(f"stage {self.stages[idx].name!r}: init_from={src!r} names no earlier stage; "
                             f"earlier stages: {', '.join(names) or 'none'}")
        return names.index(src)

    def _monitor(self, stage, metrics: dict) -> float | None:
        key = stage.monitor or self.config.get("monitor", "")
        if not key or key not in metrics or not np.isfinite(metrics[key]):
            return None
        return float(metrics[key]) if stage.monitor_mode == "max" else -float(metrics[key])

    # ---- training ----------------------------------------------------------------------------------------
    def run_stage(self, stage_idx: int, state: TrainState, tx, data, data_state: dict | None,
                  meta: dict, preempt: PreemptionFlag) -> TrainState:
        """Trains one stage from `meta["step_in_stage"]` to its end; saves, evaluates, early-stops."""
        cfg, stage = self.config, self.stages[stage_idx]
        steps_per_epoch = self.steps_per_epoch(data, stage)
        total = stage.epochs * steps_per_epoch
        eval_every = max(1, int(cfg.get("eval_every_epochs", 1))) * steps_per_epoch
        ckpt_every = int(cfg.checkpoint.get("every_steps", 0)) or eval_every
        it = self.train_iterator(data, stage, data_state)
        step_fn = self.make_train_step(tx, stage)
        start = int(meta.get("step_in_stage", 0))
        bar = ProgressBar(total, start=start, desc=f"{stage.name}")
        prof = profiling.StepProfiler(cfg.get("profile"), self.workdir, self.writer)
        clock, base_seconds = time.perf_counter(), self.train_seconds
        accum: dict[str, float] = {}
        n_accum = 0
        try:
            for step_in_stage in range(start, total):
                batch = parallel.to_global(next(it), self.mesh)
                if step_in_stage == start:
                    step_fn = prof.compile(step_fn, state, batch)
                prof.before_step(int(step_in_stage))
                t0 = time.perf_counter()
                state, metrics = step_fn(state, batch)
                metrics = jax.device_get(metrics)
                prof.after_step(int(step_in_stage), time.perf_counter() - t0)
                if step_in_stage == start and float(metrics.get("frozen_stats_drift", 0.0)) > 0:
                    log.warning("stage %s: the model changed collection values under frozen %s (kept unchanged): "
                                "it runs them in training mode; see Method.apply_kwargs", stage.name, stage.frozen)
                loss = float(metrics["loss"])
                if not np.isfinite(loss):
                    self._non_finite(f"loss became {loss} at step {step_in_stage} of stage {stage.name!r}")
                global_step = int(meta.get("global_offset", 0)) + step_in_stage + 1
                for k, v in metrics.items():  # logged values are means over the logging interval
                    accum[k] = accum.get(k, 0.0) + float(v)
                n_accum += 1
                if (step_in_stage + 1) % cfg.get("log_every_steps", 10) == 0 or step_in_stage + 1 == total:
                    self.writer.write(global_step, {f"train/{k}": v / n_accum for k, v in accum.items()})
                    accum, n_accum = {}, 0
                bar.update(1, loss=loss)
                done = step_in_stage + 1
                self.train_seconds = base_seconds + time.perf_counter() - clock
                meta = dict(meta, step_in_stage=done, epoch=done // steps_per_epoch, global_step=global_step,
                            train_seconds=self.train_seconds)
                monitor = None
                if done % eval_every == 0 or done == total:
                    monitor, meta = self._validate(stage, state, data, global_step, meta)
                    if stage.plateau:  # before the save below, so the checkpoint holds the new scale
                        state = stage_rules.plateau_after_validation(
                            cfg, stage, state, meta["val_metrics"], lambda x: parallel.replicate(x, self.mesh))
                bad_evals = int(meta.get("bad_evals", 0))
                stop_early = stage.early_stop_patience > 0 and bad_evals >= stage.early_stop_patience
                finished = done == total or stop_early
                stop = preempt.raised  # read once per step; a collective when there are several processes
                if finished or monitor is not None or done % ckpt_every == 0 or stop:
                    loss_ok, state_ok = jax.device_get(self.state_check(state, batch))
                    if not (loss_ok and state_ok):  # a state is saved only once its own loss is known to be finite
                        self._non_finite(f"the state after step {step_in_stage} of stage {stage.name!r} has "
                                         f"{guards.describe(loss_ok, state_ok)}")
                    meta["finished_stage"] = finished
                    # "monitor" is set only on the checkpoint whose validation produced it (best_step reads it)
                    self.ckpt.save(global_step, state, it.get_state(), dict(meta, monitor=monitor), monitor=monitor,
                                   force=True)
                if stop:
                    self.ckpt.wait()
                    raise Preempted(f"stopped by SIGTERM at step {global_step}; checkpoint saved, rerun to resume")
                if stop_early:
                    log.info("early stop in stage %s after %d evaluations without progress", stage.name, bad_evals)
                    break
        finally:
            it.close()  # stops Grain worker processes, also on preemption or a non-finite loss
        bar.close()
        prof.finish()
        self.writer.flush()
        return state

    def _restore(self, step: int, abstract: Any) -> tuple[Any, dict, dict]:
        try:
            return self.ckpt.restore(step, abstract)
        except CorruptCheckpointError:
            raise
        except ValueError as e:  # a readable checkpoint whose shapes or tree do not match this config's
            raise workdirs.incompatible(self.workdir, self.saved_config, self.config, e) from e

    def _non_finite(self, what: str) -> None:
        self.ckpt.wait()
        raise NonFiniteLossError(guards.message(what, self.ckpt.latest_step()))

    def _validate(self, stage, state: TrainState, data, global_step: int, meta: dict) -> tuple[float | None, dict]:
        """Evaluates the validation split, logs it, and tracks the stage's best monitored value (early stopping)."""
        val = self.evaluate_split(state, data, "val", stage=stage)["metrics"]
        self.writer.write(global_step, {f"val/{k}": v for k, v in val.items()})
        if self.config.get("track_test", False):  # per-evaluation test scores, for "mean of the best N epochs"
            test = self.evaluate_split(state, data, "test", stage=stage)["metrics"]
            self.writer.write(global_step, {f"test/{k}": v for k, v in test.items()})
        monitor = self._monitor(stage, {f"val/{k}": v for k, v in val.items()})
        best, bad = meta.get("best_monitor"), int(meta.get("bad_evals", 0))
        if monitor is not None:
            best, bad = (monitor, 0) if best is None or monitor > best else (best, bad + 1)
        return monitor, dict(meta, best_monitor=best, bad_evals=bad, val_metrics=val)

    def train(self, data) -> TrainState:
        """Runs all stages, resuming from the newest checkpoint; returns the state of the last stage's best."""
        latest = self.ckpt.recover() or 0  # the newest intact checkpoint; broken newer ones are moved aside
        meta = self.ckpt.restore_meta(latest) if latest else None
        self.train_seconds = float((meta or {}).get("train_seconds", 0.0))  # training wall time, over resumes
        self.writer.rewind(latest)  # rows a killed run wrote after its newest checkpoint
        variables = self.init_variables()
        fresh = jax.device_get(variables)  # host copy: a stage's first step donates its device buffers
        state = None
        preempt = PreemptionFlag().install()
        try:
            for idx, stage in enumerate(self.stages):
                if meta is not None and (idx < meta["stage"] or (idx == meta["stage"] and meta["finished_stage"])):
                    continue  # done before: nothing to run
                stage_rules.check_stage(stage, variables)
                tx = _stage_tx(self.config, stage, self.steps_per_epoch(data, stage), variables["params"])
                template = self.new_state(fresh, tx)
                if meta is not None and idx == meta["stage"]:
                    state, data_state, stage_meta = self._restore(latest, abstract_like(template))
                    log.info("resuming stage %s at step %d", stage.name, stage_meta["step_in_stage"])
                else:
                    source = self.source_stage(idx)
                    if source is not None:  # start from that stage's best checkpoint (else a fresh init)
                        template = self._from_best(source, template, tx)
                    state, data_state = template, None
                    offset = self.ckpt.latest_step() or 0
                    stage_meta = {"stage": idx, "stage_name": stage.name, "step_in_stage": 0,
                                  "global_offset": offset}
                meta = None
                state = self.run_stage(idx, state, tx, data, data_state, stage_meta, preempt)
                variables = {"params": state.params, **state.collections}
        finally:
            preempt.uninstall()
        self.ckpt.wait()
        return self.stage_state(len(self.stages) - 1, variables)

    def stage_state(self, idx: int, variables: dict) -> TrainState:
        """The state of stage `idx`'s best (else last) checkpoint; `variables` give the structure."""
        tx = _stage_tx(self.config, self.stages[idx], 1, variables["params"])
        return self._from_best(idx, self.new_state(variables, tx), tx)

    def exported_state(self, path: str) -> TrainState:
        """A state holding the variables of an exported model folder (no optimiser state: evaluation only)."""
        variables = model_dir.read_variables(path)
        state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                           collections={k: v for k, v in variables.items() if k != "params"}, opt_state=None,
                           rng=jax.random.PRNGKey(0))
        return parallel.replicate(state, self.mesh)

    def stage_step(self, stage_idx: int) -> int | None:
        """The checkpoint step that stands for stage `stage_idx`: its best (monitored) one, else its newest, else
        None (the stage has no checkpoint)."""
        self.ckpt.wait()
        step = self.ckpt.best_step(stage_idx)
        if step is None:
            steps = [s for s in self.ckpt.manager.all_steps() if self.ckpt.restore_meta(s).get("stage") == stage_idx]
            step = max(steps) if steps else None
        return step

    def _from_best(self, stage_idx: int, template: TrainState, tx) -> TrainState:
        """Params and collections of `stage_idx`'s best (else its last) checkpoint, fresh optimiser state."""
        step = self.stage_step(stage_idx)
        if step is None:
            return template
        prev_tx = _stage_tx(self.config, self.stages[stage_idx], 1, template.params)
        prev_template = template.replace(opt_state=prev_tx.init(template.params))
        restored, _, _ = self._restore(step, abstract_like(parallel.replicate(prev_template, self.mesh)))
        log.info("stage %d: using checkpoint step %d", stage_idx, step)
        state = template.replace(params=restored.params, collections=restored.collections,
                                 opt_state=tx.init(restored.params), step=restored.step)
        return parallel.replicate(state, self.mesh)


def train_and_evaluate(config, workdir: str, method: Method) -> dict:
    """Trains (resuming if `workdir` has checkpoints), then evaluates the best model on the test split and
    writes report.md. Returns the evaluation results by split."""
    check_path(workdir, "the workdir")  # before anything is written
    with WorkdirLock(workdir, enabled=jax.process_index() == 0):
        trainer = Trainer(config, workdir, method)
        try:  # closes the checkpoint manager and log writer after any error, a data error included
            data = trainer.method.make_data(config, jax.process_index(), jax.process_count())
            saved = workdirs.save_config(config, workdir)
            state = trainer.train(data)
            return finish(trainer, state, data)
        except workdirs.IncompatibleConfigError:
            workdirs.save_config(saved, workdir)  # the checkpoints' own config.json stays next to them
            raise
        finally:
            trainer.close(after_error=sys.exc_info()[0] is not None)


def evaluate_only(config, workdir: str, method: Method, model: str | None = None) -> dict:
    """Evaluates the best (else newest) checkpoint of `workdir`, or the exported model folder `model`
    (`gazejax.engine.model_dir`), on the test split and writes the report."""
    check_path(workdir, "the workdir")
    with WorkdirLock(workdir, enabled=jax.process_index() == 0):
        trainer = Trainer(config, workdir, method)
        try:
            stage_idx = len(trainer.stages) - 1
            if model:
                meta = model_dir.read_meta(model)
                names = [s.name for s in trainer.stages]
                if meta["stage"] not in names:
                    raise ValueError(f"{model}: stage {meta['stage']!r} is not a stage of this config "
                                     f"({', '.join(names)})")
                stage_idx = names.index(meta["stage"])
                state = trainer.exported_state(model)
            else:
                latest = trainer.ckpt.recover()
                if latest is None:
                    raise FileNotFoundError(f"no checkpoint in {trainer.ckpt.directory}; train first (--mode=train)")
                trainer.train_seconds = float(trainer.ckpt.restore_meta(latest).get("train_seconds", 0.0))
            data = trainer.method.make_data(config, jax.process_index(), jax.process_count())
            if not model:
                state = trainer.stage_state(stage_idx, trainer.init_variables())
            return finish(trainer, state, data, stage_idx=stage_idx, exported=bool(model))
        finally:
            trainer.close(after_error=sys.exc_info()[0] is not None)


def finish(trainer: Trainer, state: TrainState, data, stage_idx: int | None = None, exported: bool = False) -> dict:
    """Evaluates `state` (the weights of stage `stage_idx`, default the last) on val and test, and every stage marked
    `evaluate` with its own best checkpoint (an `exported` model holds one stage: only that one), then writes
    cases.json, report.md and results.json."""
    out_dir = os.path.join(trainer.workdir, "predictions")
    write = jax.process_index() == 0  # every process evaluates (predict is collective); host 0 writes files
    stage = trainer.stages[-1 if stage_idx is None else stage_idx]
    results = {split: trainer.evaluate_split(state, data, split, out_dir if split == "test" and write else None,
                                             stage=stage) for split in ("val", "test")}
    variables = {"params": state.params, **state.collections}
    results["stages"] = {s.name: trainer.evaluate_split(state if exported else trainer.stage_state(i, variables),
                                                        data, "test", stage=s)
                         for i, s in enumerate(trainer.stages) if s.evaluate and (not exported or s is stage)}
    results["data_info"] = data.info
    if jax.process_index() == 0:
        cases = {s: {c["case_id"]: c["scores"] for c in results[s].get("cases", [])} for s in ("val", "test")}
        io.write_json(os.path.join(trainer.workdir, "cases.json"), cases)
        path = trainer.method.report(results, trainer.config, trainer.workdir)
        # written last: its presence marks a finished run (the experiment runner skips such cells)
        summary = {s: results[s].get("metrics", {}) for s in ("val", "test")}
        summary.update({f"test@{name}": r.get("metrics", {}) for name, r in results["stages"].items()})
        # Cost facts apart from results.json, which an interrupted and resumed run reproduces exactly.
        io.write_json(os.path.join(trainer.workdir, "run.json"),
                      {"params": int(sum(int(np.size(x)) for x in jax.tree.leaves(state.params))),
                       **({} if exported else {"train_seconds": round(trainer.train_seconds, 3)})})
        io.write_json(os.path.join(trainer.workdir, "results.json"), summary)
        log.info("report written to %s", path)
    return results

