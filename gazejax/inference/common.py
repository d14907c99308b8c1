"""What every `gazejax.predict` input family shares: exported models loaded and checked for an ensemble, inputs read
one ahead of the computation, failures reported per input (writes go through `gazejax.data.io`'s atomic writers)."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Iterable, Iterator

from gazejax.data.errors import DataError

# Errors of one input (unreadable, malformed, wrong geometry): reported, the input skipped, the others predicted.
INPUT_ERRORS = (DataError, OSError, ValueError, EOFError)


@dataclasses.dataclass
class LoadedModel:
    """One exported model, ready to apply: `predict(*inputs) -> outputs` as the method's evaluation receives it."""

    path: str
    config: Any
    meta: dict
    method: Any
    stage: Any
    predict: Callable


def load_models(paths: list[str], mesh=None, spatial: int = 1) -> list[LoadedModel]:
    """Loads export folders (`gazejax.engine.model_dir`) onto `mesh`, by default every device: the 1-D data mesh, or
    with `spatial` = N > 1 (`--spatial`) the 2-D `(data, spatial)` mesh that splits each volume along depth over N
    devices, as `config.mesh.spatial` does in training. An ensemble's models must share kind, output names and
    preprocessing spec (error naming the first that differs)."""
    from gazejax import methods
    from gazejax.engine import model_dir, parallel, predictor

    if not paths:
        raise ValueError("--model: give at least one model folder (written by python -m gazejax.export)")
    mesh = mesh or parallel.make_mesh(spatial=spatial, spatial_name="--spatial")
    loaded = []
    for path in paths:
        config, meta, variables = model_dir.read(path)
        check_spatial(parallel.spatial_size(mesh), meta, path)
        method = methods.get(meta["method_family"])
        stages = {s.name: s for s in method.stages(config)}
        if meta["stage"] not in stages:
            raise model_dir.ModelDirError(f"{path}: stage {meta['stage']!r} is not a stage of {meta['method_family']}"
                                          f" / {meta['method']} ({', '.join(stages)})")
        model = method.build_model(config)
        predict = predictor.bind(predictor.jitted_apply(model, mesh, predictor.compiler_options(config)),
                                 parallel.replicate(variables, mesh), mesh)
        loaded.append(LoadedModel(os.path.abspath(path), config, meta, method, stages[meta["stage"]], predict))
    first = loaded[0]
    for other in loaded[1:]:
        for key in ("kind", "labels", "preprocessing"):
            if other.meta[key] != first.meta[key]:
                raise ValueError(f"--model: {other.path} has another {key} than {first.path} "
                                 f"({json.dumps(other.meta[key])[:120]} vs {json.dumps(first.meta[key])[:120]}); "
                                 f"an ensemble's models must share it")
    return loaded


def check_spatial(spatial: int, meta: dict, path: str) -> None:
    """One-line errors for a `--spatial` = N > 1 that the export `path` (its model.json `meta`) cannot use: a 2D
    model, or an input depth N does not divide (whole brain boxes are zero-padded to multiples of the spec's
    `pad_multiple`, windows have the spec's depth). N = 1 fits every model."""
    if spatial == 1:
        return
    if meta["kind"] != "volume":
        raise ValueError(f"--spatial={spatial}: splits 3D volumes along depth over devices; {path} is a model of "
                         f"2D {meta['kind']}s: use --spatial=1")
    spec = meta["preprocessing"]
    if spec.get("eval_mode") == "window":
        depths = {"window": spec["window"][0], "gaze_window": (spec.get("gaze_window") or [spec["window"][0]])[0]}
    else:
        depths = {"whole brain boxes padded to multiples of": spec.get("pad_multiple", 1)}
    for what, depth in depths.items():
        if depth % spatial:
            raise ValueError(f"--spatial={spatial} does not divide the input depth of {path} ({what} {depth}): use a "
                             f"divisor of {depth}")


def prefetch(items: Iterable[Any], load: Callable[[Any], Any]) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """Yields (item, load(item), None), or (item, None, error) for an input error, in order, loading the next item in
    a background thread while the caller computes on the current one."""
    items = list(items)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(load, items[0]) if items else None
        for i, item in enumerate(items):
            current = ahead
            ahead = pool.submit(load, items[i + 1]) if i + 1 < len(items) else None
            try:
                yield item, current.result(), None
            except INPUT_ERRORS as e:
                yield item, None, e


class Failures:
    """Inputs that could not be predicted: each reported on one line when it happens, summarised at the end."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.items: list[tuple[str, str]] = []

    def add(self, name: str, error: BaseException, what: str = "skipped") -> None:
        """Reports `name` on one line ("skipped": not predicted; "not scored": predicted, --labels failed)."""
        why = " ".join(str(error).split()) or type(error).__name__
        self.items.append((name, why))
        print(f"gazejax.predict: {what} {name}: {why}", file=self.stream, flush=True)

    def summary(self, total: int) -> str:
        shown = "; ".join(f"{n}: {w}" for n, w in self.items[:5])
        more = f"; and {len(self.items) - 5} more" if len(self.items) > 5 else ""
        return f"{len(self.items)} of {total} inputs failed ({shown}{more})"
