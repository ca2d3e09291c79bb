"""Datasets, training, calibration, evaluation, ablations, class descriptions and demonstration
banks."""
