"""Stage 2, the plan: the pretraining and evaluation jobs of a suite, each with the key that marks it done."""
