"""SAN + AAB (Huang et al., BMVC 2021) for 3D brain-tumour segmentation on BraTS: model and losses (spec),
sliding-window evaluation (evaluate), report.md and figures (report)."""
from gazejax.engine.api import Method
from gazejax.methods.san_aab import inference, report, spec

METHOD = Method(name="san_aab", build_model=spec.build_model, init_batch=spec.init_batch, loss_fn=spec.loss_fn,
                make_data=spec.make_data, evaluate=spec.evaluate, report=report.write, stages=spec.stages,
                inference=inference.INFERENCE)
