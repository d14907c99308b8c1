"""CXRGazeLearn (Qiu et al.): triplet-pretrained DenseNet-201, Res_SE-UNet saliency and fusion classifier as four
stages: model, stages, data and evaluation (spec), triplet loss (losses), report.md and figures (report)."""
from gazejax.engine.api import Method
from gazejax.methods.cxrgazelearn import inference, report, spec

METHOD = Method(name="cxrgazelearn", build_model=spec.build_model, init_batch=spec.init_batch,
                loss_fn=spec.loss_fn, make_data=spec.make_data, evaluate=spec.evaluate, report=report.write,
                stages=spec.stages, inference=inference.INFERENCE, apply_kwargs=spec.apply_kwargs)
