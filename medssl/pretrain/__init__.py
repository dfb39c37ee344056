"""Stage 3, pretraining: training a method into an encoder, its monitor, and exporting trunks."""
