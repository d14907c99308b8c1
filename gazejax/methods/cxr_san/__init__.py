"""SAN + AAB in 2D (Huang et al., BMVC 2021, Table 4): five-finding chest X-ray classification: model, losses,
data and evaluation (spec), report.md and figures (report)."""
from gazejax.engine.api import Method
from gazejax.methods.cxr_san import inference, report, spec

METHOD = Method(name="cxr_san", build_model=spec.build_model, init_batch=spec.init_batch, loss_fn=spec.loss_fn,
                make_data=spec.make_data, evaluate=spec.evaluate, report=report.write, stages=spec.stages,
                inference=inference.INFERENCE)
