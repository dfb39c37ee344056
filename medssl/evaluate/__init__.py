"""Stage 4, evaluation: linear probes, kNN, fine-tuning and segmentation of an encoder, metrics, encoders brought from files."""
