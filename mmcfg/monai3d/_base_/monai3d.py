# What every MONAI 3D model shares: the modules to register, the mmengine model around the MONAI network (its
# ``net`` comes from segresnet.py / dynunet.py), multi-label (one sigmoid channel per class of WORK/dataset.json, in
# its order), input (B, K, H, W, D) with K the dataset's image channels.
custom_imports = dict(
    imports=[
        "training.runner",
        "training.hooks",
        "segmenters.monai.model",
        "segmenters.monai.data",
        "segmenters.monai.metric",
        "segmenters.monai.hooks",
    ],
    allow_failed_imports=False,
)
model = dict(
    type="Monai3DSegmenter",
    data_preprocessor=dict(type="Monai3DDataPreprocessor"),
    loss=dict(type="DiceBCELoss", lambda_dice=1.0, lambda_bce=1.0),
    prior_prob=0.02,  # output biases start at logit(0.02): organs fill a few % of a volume
    # inference (tools/infer_3d.py, the ensembles): sliding window over the resampled volume, Gaussian blending,
    # flip TTA (identity + left-right + slice order), float16 on CUDA
    test_cfg=dict(
        roi_size=(224, 224, 80),
        overlap=0.7,
        mode="gaussian",
        sigma_scale=0.125,
        sw_batch_size=2,
        tta=("flip",),
        amp=True,
    ),
    # validation during training: the same window with less overlap and no TTA
    val_cfg=dict(overlap=0.5, tta=()),
)
