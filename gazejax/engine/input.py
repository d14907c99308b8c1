"""The trainer's training-data iterator: one stage's Grain pipeline (shuffle, repeat, augment, process shard,
batch, threads or worker processes) whose position is saved in checkpoints and restored on resume."""
from __future__ import annotations

from typing import Any

import jax


class TrainIterator:
    """Batches of a stage's training set; `get_state()` is what a checkpoint stores, tagged with the worker count
    (Grain's iterator state depends on it: a state of N workers set on M != N workers resumes at the wrong batch)."""

    def __init__(self, iterator: Any, num_workers: int):
        self._it, self.num_workers = iterator, num_workers

    def __next__(self) -> dict:
        return next(self._it)

    def __iter__(self) -> "TrainIterator":
        return self

    def get_state(self) -> dict:
        return {"grain": self._it.get_state(), "num_workers": self.num_workers}

    def set_state(self, state: dict, where: str = "checkpoint") -> None:
        saved = int(state.get("num_workers", 0)) if "grain" in state else 0  # untagged: saved before workers existed
        if saved != self.num_workers:
            raise ValueError(f"{where}: the data position was saved with data.num_workers={saved} but this run uses "
                             f"{self.num_workers}; resume with --config.data.num_workers={saved}")
        self._it.set_state(state["grain"] if "grain" in state else state)

    def close(self) -> None:
        """Stops worker processes and frees their shared memory (a no-op for in-process threads)."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def train_iterator(config, train, augment, local_batch_size: int, epochs: int,
                   data_state: dict | None = None, where: str = "checkpoint") -> TrainIterator:
    """`train` (a grain.MapDataset of single examples) shuffled by `config.seed`, repeated `epochs` times, augmented
    (seeded by the global index before process sharding, so any process count sees the same examples), this
    process's share, batched by `local_batch_size` (remainder dropped); `config.data.num_workers` > 0 runs the
    pipeline in that many Grain worker processes (same order as in-process), else in reader threads."""
    import grain

    cfg = config
    ds = train.shuffle(seed=cfg.seed).repeat(epochs)
    if augment is not None:
        ds = ds.seed(cfg.seed + 7).random_map(augment)
    ds = ds[jax.process_index()::jax.process_count()]
    ds = ds.batch(local_batch_size, drop_remainder=True)
    read = grain.ReadOptions(num_threads=cfg.data.get("num_threads", 2),
                             prefetch_buffer_size=cfg.data.get("prefetch", 2))
    ds = ds.to_iter_dataset(read)
    workers = int(cfg.data.get("num_workers", 0))
    if workers < 0:
        raise ValueError(f"data.num_workers must be >= 0, got {workers}")
    if workers > 0:  # GIL-bound numpy/scipy augmentation in worker processes
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain reads its absl flags; a library caller (tests, notebooks) has none
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    it = TrainIterator(iter(ds), workers)
    if data_state:
        it.set_state(data_state, where)
    return it
