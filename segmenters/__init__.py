"""The segmenters, two symmetric families:

- ``segmenters.mm``: 2.5D models on mmsegmentation 1.x (registered modules named in the configs'
  ``custom_imports``; the mmcv-lite shim ``segmenters.mmcv_compat`` comes first), and their inference API
  ``segmenters.mm.inference.Segmenter``;
- ``segmenters.monai``: 3D models on MONAI, and their inference API ``segmenters.monai.inference.Segmenter3D``.

Both train on the one training engine (:mod:`training`) and are run over WORK folders or test trees by
:mod:`inference`. This file imports nothing, so that the 3D modules load without mmseg.
"""
