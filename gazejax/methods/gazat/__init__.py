"""GazAT: gaze-guided contrastive pretraining, attention transfer and regional contrast, with SSL baselines:
model, losses and stages (spec, losses), views and data (data), probe/fine-tuning/alignment evaluation
(evaluate), report.md and figures (report)."""
from gazejax.engine.api import Method
from gazejax.methods.gazat import data, evaluate, inference, report, spec

METHOD = Method(name="gazat", build_model=spec.build_model, init_batch=spec.init_batch, loss_fn=spec.loss_fn,
                make_data=data.make_data, evaluate=evaluate.evaluate, report=report.write, stages=spec.stages,
                model_inputs=spec.model_inputs, per_step_collections=("target",),  # momentum EMA: once per step
                inference=inference.INFERENCE)
