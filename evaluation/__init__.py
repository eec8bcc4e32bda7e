"""Evaluation: the competition metric, the Dice tables, the classifier's gate score, score tables and pictures.

Below every stage that trains or predicts (their validation hooks select checkpoints with it) and below the
ensemble search; it imports only ``common`` and ``data_prep``. Modules: ``metric`` (competition score, Dice,
Hausdorff), ``classification`` (presence metrics and the gate score), ``scoring`` (RLE tables and files),
``pictures`` (overlays of a case-day).
"""
