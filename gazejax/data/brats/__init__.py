"""BraTS 2020: the case-folder reader (reader), preprocessed case records with their disk cache (records) and the
training/evaluation pipeline (pipeline). `read_case`, `list_cases` and the fixation reader are re-exported here,
as the public reader API (`gazejax.data.brats.read_case(case_dir)`)."""
from gazejax.data.brats.reader import (  # noqa: F401  (re-exported)
    MODALITIES, Fixations, list_cases, load_nifti, read_case, read_fixations, read_survival, survival_class)

__all__ = ["MODALITIES", "Fixations", "list_cases", "load_nifti", "read_case", "read_fixations", "read_survival",
           "survival_class"]
