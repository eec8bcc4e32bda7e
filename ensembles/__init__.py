"""Stage 3: fuse, gate, threshold, post-process, RLE, submission; the competition metric; the weight search.

Modules (nothing is imported here, so ``import ensembles.metric`` stays a leaf import):
``metric`` (the competition metric), ``core`` (pure fusion and post-processing), ``spec`` (ensemble specs),
``io`` (tables, probability folders, atomic writes), ``scoring`` (score CSVs), ``search`` (tune on OOF),
``pipeline`` (test tree -> submission, used by ``tools/infer.py``). CLI: ``python -m ensembles {score,search}``.
"""
