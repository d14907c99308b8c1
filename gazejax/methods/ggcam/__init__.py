"""GG-CAM (Zhu et al.): CAM-layer classifier with gaze-guided selective MSE: model, data, evaluation and stages
(spec), the selective MSE and Eq. 11 weighting (losses), report.md and figures (report)."""
from gazejax.engine.api import Method
from gazejax.methods.ggcam import inference, report, spec

METHOD = Method(name="ggcam", build_model=spec.build_model, init_batch=spec.init_batch, loss_fn=spec.loss_fn,
                make_data=spec.make_data, evaluate=spec.evaluate, report=report.write, stages=spec.stages,
                inference=inference.INFERENCE)
