"""The engine: the method contract (api), the one trainer, its input pipeline, mesh, checkpoints, optimisers,
logs and profiling. Imports nothing from gazejax.methods except the registry lookup by name."""
