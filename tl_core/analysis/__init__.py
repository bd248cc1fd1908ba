"""Measuring data, runs and models: the data probe, the LR finder, layer drift, forgetting, statistics of comparisons, metrics, Grad-CAM, stored predictions."""
