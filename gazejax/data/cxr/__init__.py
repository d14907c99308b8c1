"""Chest X-ray data: EGD-CXR and REFLACX readers (egd_cxr, reflacx) over shared label/fixation records (labels),
cached display-ready images (records) and the examples, splits and gaze maps the CXR methods train on (pipeline)."""
