"""Data for training and evaluation: batches streamed from the cache, label fractions and splits, example figures."""
