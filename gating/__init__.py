"""gating: the stage that decides which slices (and which part of them) the segmenters see.

- :mod:`gating.classifier`: the slice classifier (a timm model, one presence logit per class of the dataset on 2.5D
  stacks): inputs, ``SliceClassifier.load(checkpoint, device, config=None, work=None)`` + ``predict_volume``,
  ``.classes``, ``cls_probs.csv`` files.
- :mod:`gating.mm`: its mmengine modules (dataset, model, metric ``cls/score`` = the gate score, out-of-fold hook),
  trained by ``tools/train.py`` with the ``mmcfg/gating/`` configs.
- :mod:`gating.gate`: thresholds and gate decisions from presence probabilities or masks.
- :mod:`gating.crop`: the YOLO crop-box detector (inference, boxes, crops); :mod:`gating.yolo_train` trains it.
"""
