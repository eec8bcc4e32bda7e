"""3D segmenters with MONAI (SegResNet, DynUNet) on whole case-day volumes: ``volumes`` (preprocessing, network and
loss builders), ``train`` (training), ``inference`` (:class:`segmenters.monai.inference.Segmenter3D`: sliding window,
TTA, probabilities at every slice's original size)."""
