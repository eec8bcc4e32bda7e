"""Stage 2: the segmenters.

- 2.5D (mmsegmentation 1.x): registered modules in ``segmenters.mm`` (named in ``mmcfg/_base_/default_runtime.py``),
  training (``segmenters.train``, ``tools/train.py``), probability maps (``segmenters.predict``,
  ``tools/test.py``) and the inference API ``segmenters.inference.Segmenter``.
- 3D (MONAI): ``segmenters.infer_3d`` and ``segmenters.monai3d*``.

This file imports nothing, so that the 3D modules load without mmseg.
"""
