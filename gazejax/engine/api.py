"""What a method is: data, a model, losses, evaluation and stages, declared as plain data for the one trainer.

A method never owns a training loop. `gazejax.engine.trainer` builds the state from `build_model` and `init_batch`, steps
with `loss_fn` through the stages, and hands a prediction function to `evaluate` and the results to `report`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage: its epochs, which parameters it trains and optional optimiser overrides.

    `trainable` holds glob patterns over "/"-joined parameter paths (e.g. "encoder/*"); ("*",) trains everything.
    `monitor` names the validation metric that picks the stage's best checkpoint (higher is better unless
    `monitor_mode="min"`); `early_stop_patience` > 0 stops the stage after that many evaluations without progress.
    `train_set` names the DataBundle training set the stage reads ("train" or a key of `DataBundle.train_sets`).
    `init_from` names the stage whose best checkpoint this stage starts from: None = the previous stage (a fresh
    initialisation for the first), "init" = a fresh initialisation (e.g. two fine-tunings of one pretraining).
    `evaluate=True` also evaluates the test split with this stage's best checkpoint at the end of the run; the
    method's `report` finds those results under `results["stages"][name]`. `options` are free-form settings the
    method's `loss_fn` / `evaluate` read (they receive the Stage as `stage=`).

    `frozen` holds glob patterns (as `trainable`) of sub-trees the stage freezes entirely: their parameters get no
    update (whatever `trainable` says), their leaves in every mutable collection (BatchNorm `batch_stats`, ...;
    matched by the path inside the collection, so "features/*" covers params["features"] and
    batch_stats["features"]) stay bit-identical through the stage, and the model is asked to run them in inference
    mode through `Method.apply_kwargs(stage)` (a warning says when it did not, i.e. changed those statistics).
    A pattern that matches nothing is an error.

    `plateau` (empty = off) reduces the stage's learning rate on a plateau of a validation metric, with the
    semantics of torch's ReduceLROnPlateau (`gazejax.engine.optim.plateau_step`): {"monitor": "val/loss"
    (required), "mode": "min"|"max" ("min"), "factor": 0.1, "patience": 10, "threshold": 1e-4, "threshold_mode":
    "rel"|"abs" ("rel"), "cooldown": 0, "min_lr": 0.0, "eps": 1e-8} (torch's defaults). After each validation the
    monitored value counts as an improvement when it beats the best by more than the threshold (rel: value <
    best * (1 - threshold) in mode "min"); after more than `patience` evaluations without one the learning rate is
    multiplied by `factor` (not below `min_lr`). The scale lives in the optimiser state (checkpointed, kept on
    resume, logged as train/lr_scale); the optimiser's moments are not reset. Early stopping is separate: it keeps
    counting `early_stop_patience` evaluations on `monitor`.
    """

    name: str
    epochs: int
    trainable: tuple[str, ...] = ("*",)
    optimizer: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    monitor: str = ""
    monitor_mode: str = "max"
    early_stop_patience: int = 0
    train_set: str = "train"
    init_from: str | None = None
    evaluate: bool = False
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    frozen: tuple[str, ...] = ()
    plateau: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DataBundle:
    """A method's data for one run.

    train: a `grain.MapDataset` of single training examples (dicts of numpy arrays), in a fixed order; the trainer
      shuffles it per epoch, repeats it, shards it over processes, augments and batches it.
    augment: `fn(example, rng: np.random.Generator) -> example` applied by the trainer (grain random_map), or None.
    num_train: number of training examples (global, before process sharding).
    splits: evaluation splits by name ("val", "test"): whatever the method's `evaluate` consumes.
    info: free-form facts for the report (case ids per split, data root, ...).
    train_sets: further training sets by name (MapDatasets like `train`) that stages select with `Stage.train_set`
      (e.g. a 1 % label subset for fine-tuning); they share `augment` unless `augments` names another for them.
    """

    train: Any
    num_train: int
    splits: dict[str, Any]
    augment: Callable[[Any, np.random.Generator], Any] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    train_sets: dict[str, Any] = dataclasses.field(default_factory=dict)
    augments: dict[str, Callable[[Any, np.random.Generator], Any] | None] = dataclasses.field(default_factory=dict)

    def train_set(self, name: str) -> tuple[Any, int, Callable | None]:
        """(dataset, number of examples, augment fn) of the training set `name`."""
        if name == "train":
            return self.train, self.num_train, self.augment
        if name not in self.train_sets:
            raise ValueError(f"stage asks for training set {name!r}; the data bundle has "
                             f"{', '.join(['train', *self.train_sets])}")
        ds = self.train_sets[name]
        return ds, len(ds), self.augments.get(name, self.augment)


@dataclasses.dataclass(frozen=True)
class Inference:
    """How `gazejax.predict` applies a trained (exported) model of the method to new inputs, declared as data.

    kind: "volume" (a BraTS case: four co-registered NIfTI modalities) or "image" (one radiograph).
    preprocessing(config) -> JSON-able dict: everything that turns a file into the model's input (crop size,
      normalisation, resize and padding, reader options, output grid). Stored in the export; the models of an
      ensemble must have equal specs.
    labels(config) -> output names: classes or findings ("image"), regions ("volume": ET, TC, WT).
    run(predict, inputs, config, stage) -> dict, with `predict` as in `Method.evaluate`:
      "image": inputs float32 [B, H, W, 1] in [0, 1], already resized as the spec says ->
        {"probs": float64 [B, C] (softmax classes, or per-finding sigmoids when `multilabel`),
         "map": float32 [B, h, w] explanation map (see `map_name`) or None};
      "volume": inputs float32 [X, Y, Z, 4] brain box, normalised as in training ->
        {"seg_prob": float32 [X, Y, Z, 3] (ET, TC, WT sigmoids), "gaze_prob": float32 [gx, gy, gz] or None,
         "gaze_frame": the padded (X', Y', Z') the gaze grid divides}.
    multilabel(config) -> True when the probabilities are independent per-finding sigmoids.
    map_name(config, stage) -> what "map" is (e.g. "CAM of the predicted class"); "" when the model has none.
    """

    kind: str
    preprocessing: Callable[[Any], dict]
    labels: Callable[[Any], tuple[str, ...]]
    run: Callable[..., dict]
    multilabel: Callable[[Any], bool] = lambda config: False
    map_name: Callable[[Any, Any], str] = lambda config, stage: ""


@dataclasses.dataclass(frozen=True)
class Method:
    """A method = model + losses + data + evaluation + report + stages.

    build_model(config) -> flax.linen.Module whose `apply(variables, *model_inputs(batch), train=...)` returns a dict.
    model_inputs(batch) -> tuple of arrays given to the model (default: (batch["image"],)).
    init_batch(config) -> a dict of numpy arrays shaped like one per-device training batch (for `init`).
    loss_fn(outputs, batch, params, config, stage=None) -> (scalar loss, dict of scalar metrics); pure jnp,
      jit-traced; `stage` is the Stage being trained (its name / options select stage-specific losses).
    make_data(config, process_index, process_count) -> DataBundle.
    evaluate(predict, split_data, config, out_dir|None, stage=None) -> dict with "metrics" (flat dict of floats)
      and anything the report needs; `predict(batch_of_inputs) -> outputs` runs the jitted model; `stage` is the
      stage whose weights `predict` uses.
    report(results_by_split, config, workdir) -> path of report.md.
    stages(config) -> list[Stage].
    apply_kwargs(stage) -> dict of extra keyword arguments of `model.apply` in training steps (default none); a
      model with frozen sub-modules takes here the switch that runs them in inference mode (`Stage.frozen`).
      `stage` is None for a step built without a stage.
    inference: how `gazejax.predict` applies the method's exported models to new files (`Inference`).
    per_step_collections: mutable collections that advance once per optimiser step when `grad_accum_steps` k > 1
      (e.g. a momentum encoder's EMA: updated per micro-batch, its momentum would act as m^k): every micro-batch
      reads their step-start value and the step keeps the last micro-batch's update. The other collections
      (BatchNorm statistics, a MoCo queue that must enqueue every micro-batch) advance per micro-batch. With k = 1
      both rules are the same; names the model lacks (a baseline without a momentum encoder) are ignored.
    """

    name: str
    build_model: Callable[[Any], Any]
    init_batch: Callable[[Any], dict[str, np.ndarray]]
    loss_fn: Callable[..., tuple[Any, dict[str, Any]]]
    make_data: Callable[..., DataBundle]
    evaluate: Callable[..., dict[str, Any]]
    report: Callable[..., str]
    stages: Callable[[Any], list[Stage]]
    model_inputs: Callable[[Mapping[str, Any]], tuple] = lambda batch: (batch["image"],)
    apply_kwargs: Callable[[Stage | None], dict[str, Any]] = lambda stage: {}
    per_step_collections: tuple[str, ...] = ()
    inference: Inference | None = None


def iterate_in_batches(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """Yields lists of at most `size` consecutive items."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
