"""Sweeps over config grids (runner) and the paper-style tables and statistics built from them (tables).

  python -m gazejax.experiments --config=configs/brats.py --grid=table1
"""
