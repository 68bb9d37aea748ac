"""rlrec: reinforcement-learning recommenders for e-commerce."""

__version__ = "0.1.0"
