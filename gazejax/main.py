"""Command-line entry point: parses flags and hands the config to the trainer; nothing else.

  python -m gazejax.main --config=configs/brats.py[:key=val,...] [--workdir=DIR] [--config.a.b=v]
                         [--mode=train|evaluate]
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


def default_workdir(config) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{config.method_family}-{config.method}-{config.preset}-{stamp}")


def main(argv) -> int:
    del argv
    logging.getLogger("gazejax").setLevel(logging.INFO)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/brats.py")
    import jax

    from gazejax import methods
    from gazejax.engine import logs, parallel, trainer as train

    parallel.maybe_initialize_distributed(config)
    logs.quiet_other_processes()  # INFO lines from process 0 only
    workdir = _WORKDIR.value or default_workdir(config)
    print(f"workdir: {os.path.abspath(workdir)}", flush=True)
    try:
        if _MODE.value == "train":
            results = train.train_and_evaluate(config, workdir, methods.get(config.method_family))
        else:
            results = train.evaluate_only(config, workdir, methods.get(config.method_family))
    except train.Preempted as e:
        print(f"gazejax: {e}", file=sys.stderr)
        return 143
    except (train.NonFiniteLossError, FileNotFoundError, ValueError) as e:
        if os.environ.get("GAZEJAX_DEBUG"):
            raise
        print(f"gazejax: error: {e}", file=sys.stderr)
        return 1
    test = results.get("test", {}).get("metrics", {})
    if test:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in test.items() if not k.endswith("_std"))
        print(f"test: {shown}")
    if jax.process_index() == 0:  # only process 0 writes the report
        print(f"report: {os.path.abspath(os.path.join(workdir, 'report.md'))}")
    return 0


def run() -> None:
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
