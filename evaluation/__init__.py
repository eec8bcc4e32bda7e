"""Evaluation: the competition metric, the field's surface metrics, the Dice tables, the classifier's gate score, score
tables and pictures.

Below every stage that trains or predicts (their validation hooks select checkpoints with it) and below the
ensemble search; it imports only ``common`` and ``data_prep``. Every table is named by the dataset's classes.
Modules: ``metric`` (competition score, Dice, Hausdorff, 3D Dice per volume; with a voxel spacing also DSC, NSD,
HD95 and ASSD per class and case, and the objectives a search maximises), ``surface`` (surfaces in mm and their
distances: NSD at a tolerance, robust Hausdorff, average surface distance, as DeepMind's surface-distance defines
them, exact and fast), ``classification`` (presence metrics and the gate score), ``scoring`` (RLE tables, and
folders of label volumes in a WORK's input format; the one report table of a run), ``predictions`` (prediction
folders: the format's writer and reader, ``predictions.json``), ``pictures`` (overlays of a case-day or a WORK
volume, any number of classes).
"""
