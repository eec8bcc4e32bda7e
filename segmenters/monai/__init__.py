"""3D segmenters with MONAI (SegResNet, DynUNet) on whole case-day volumes, trained on the project's training engine
(:mod:`training`, mmengine's Runner) with the configs of ``mmcfg/monai3d/``:

- ``volumes``: pure functions (normalisation, in-plane resampling, patch-size checks, network and loss builders,
  TTA flips);
- ``model``, ``data``, ``metric``, ``hooks``: the registered modules the configs name (``Monai3DSegmenter``,
  ``CaseDayPatchDataset``, ``CaseDayVolumeDataset``, ``CaseDayPatchSampler``, ``CaseDay3DMetric``,
  ``PatchStageHook``);
- ``inference``: :class:`segmenters.monai.inference.Segmenter3D` (sliding window, TTA, probabilities at every
  slice's original size).

This file imports nothing, so that importing one of them does not import the others.
"""
