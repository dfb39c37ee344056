"""Supervised from scratch ("Sup." in the CoBooM tables, section 4 "Baselines").

No pretraining: the exported encoder is the seeded random initialisation of the shared ResNet trunk. Under
linear probing this row is the randomly initialised *frozen* encoder, the floor every SSL method must beat;
under fine-tuning it is ordinary supervised training from random weights.
"""
from methods.base import SSLMethod


class Supervised(SSLMethod):
    needs_pretraining = False
    n_views = 0
