"""Command-line entry point: parses flags and hands the config to the trainer; nothing else.

  python -m gazejax.main --config=configs/brats.py[:key=val,...] [--workdir=DIR] [--config.a.b=v]
                         [--mode=train|evaluate]
  python -m gazejax.main --mode=evaluate --model=MODEL_DIR [--config=...] [--workdir=DIR]

`--model` evaluates an exported model folder (`python -m gazejax.export`) instead of a workdir's checkpoints, on
the test split of its own config (or of --config, e.g. with another data root).
"""
from __future__ import annotations

import datetime
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, optionally with :key=val,... arguments.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (default: a new folder under runs/). Rerunning with "
                               "the same folder resumes from its newest checkpoint.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate"], "train (then evaluate) or evaluate only.")
_MODEL = flags.DEFINE_string("model", None, "With --mode=evaluate: an exported model folder to evaluate (its "
                             "config is used unless --config is given).")


def _one_line(error: BaseException) -> str:
    """The last non-empty line of an exception message (config_flags and flag errors span several lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    return text.strip("'\"") if isinstance(error, (AttributeError, KeyError)) else text


def _usage_error(message: str) -> None:
    print(f"gazejax: usage error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with one line and exit status 2 for a bad flag, a missing or failing config file, an
    unknown config argument or preset, or an unknown `--config.<field>` (GAZEJAX_DEBUG=1 shows the traceback)."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001  (flags.Error, and whatever the config file's get_config raises)
        if os.environ.get("GAZEJAX_DEBUG"):
            raise
        if isinstance(e, AttributeError):
            _usage_error(f"unknown config field in a --config.* override: {_one_line(e)}")
        if isinstance(e, OSError) or "No such file" in str(e):
            _usage_error(f"cannot load the config file: {_one_line(e)}")
        _usage_error(_one_line(e))
    return []


def check_config(config) -> None:
    """Values no run can use, refused before anything is written (exit status 2)."""
    if int(config.batch_size) < 1:
        _usage_error(f"config.batch_size must be >= 1, got {config.batch_size}")


def default_workdir(config) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{config.method_family}-{config.method}-{config.preset}-{stamp}")


def main(argv) -> int:
    del argv
    logging.getLogger("gazejax").setLevel(logging.INFO)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        config = _CONFIG.value
        if config is not None:
            config.get("method_family")  # a file that failed to load leaves a placeholder that raises on use
    except OSError as e:  # config_flags defers a failed load of the file to the first read of the value
        if os.environ.get("GAZEJAX_DEBUG"):
            raise
        _usage_error(f"cannot load the config file: {_one_line(e)}")
    if _MODEL.value and _MODE.value != "evaluate":
        _usage_error("--model applies to --mode=evaluate (train a run, then export it)")
    if config is None and _MODEL.value:
        from gazejax.engine import model_dir

        try:
            config = model_dir.read_config(_MODEL.value)
            model_dir.read_meta(_MODEL.value)
        except ValueError as e:
            _usage_error(str(e))
    if config is None:
        _usage_error("--config is required, e.g. --config=configs/brats.py")
    check_config(config)
    import jax

    from gazejax import methods
    from gazejax.engine import logs, parallel, trainer as train

    parallel.maybe_initialize_distributed(config)
    logs.quiet_other_processes()  # INFO lines from process 0 only
    workdir = _WORKDIR.value or default_workdir(config)
    print(f"workdir: {os.path.abspath(workdir)}", flush=True)
    quiet = logs.QuietOrbaxThreadErrors()
    if not os.environ.get("GAZEJAX_DEBUG"):
        logging.getLogger("absl").addFilter(quiet)
    try:
        if _MODE.value == "train":
            results = train.train_and_evaluate(config, workdir, methods.get(config.method_family))
        else:
            results = train.evaluate_only(config, workdir, methods.get(config.method_family), model=_MODEL.value)
    except train.Preempted as e:
        print(f"gazejax: {e}", file=sys.stderr)
        return 143
    except (train.NonFiniteLossError, ValueError, OSError) as e:  # OSError: missing files, read-only or full disk
        if os.environ.get("GAZEJAX_DEBUG"):
            raise
        hidden = (f" ({quiet.dropped} tracebacks from Orbax's writer threads hidden; GAZEJAX_DEBUG=1 shows them)"
                  if quiet.dropped else "")
        print(f"gazejax: error: {' '.join(str(e).split())}{hidden}", file=sys.stderr)
        return 1
    test = results.get("test", {}).get("metrics", {})
    if test:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in test.items() if not k.endswith("_std"))
        print(f"test: {shown}")
    if jax.process_index() == 0:  # only process 0 writes the report
        print(f"report: {os.path.abspath(os.path.join(workdir, 'report.md'))}")
    return 0


def run() -> None:
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)


if __name__ == "__main__":
    run()
