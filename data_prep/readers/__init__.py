"""Readers of input formats other than the Kaggle layout (:mod:`data_prep.readers.base` gives their contract)."""
