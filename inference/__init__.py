"""Inference: run trained models and ensembles over WORK folders and test trees, and write what they produce.

Modules: ``pipeline`` (a test tree or a WORK folder -> predictions in the input's format: ``submission.csv`` for the
Kaggle layout, one file per volume otherwise; case-day by case-day, with an ensemble spec; the rule itself is
:func:`ensembles.core.ensemble`), ``predict`` (probability folders of one model over a WORK folder: out-of-fold
and test maps of the 2.5D and 3D segmenters), ``submission`` (RLE rows and their order).
"""
