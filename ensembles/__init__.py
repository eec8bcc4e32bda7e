"""Ensembles: fusion, gate, thresholds and post-processing as one rule on arrays; ensemble specs; the search.

Modules: ``core`` (pure fusion and post-processing, :func:`ensembles.core.ensemble`: the one rule that the search
scores and inference runs), ``spec`` (ensemble specs), ``search`` (tune weights and thresholds on out-of-fold
probability folders). CLI: ``python -m ensembles {score,search}`` (``score`` is :mod:`evaluation.scoring`).
Running an ensemble on a test tree is :mod:`inference.pipeline`.
"""
