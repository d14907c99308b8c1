"""Printed benchmarks: one config's train/inference step (step), every model at demo and paper presets (suite),
analytic gaze maps (gaze).

  python -m gazejax.bench --config=configs/brats.py
"""
