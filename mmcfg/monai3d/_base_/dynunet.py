# MONAI DynUNet (nnU-Net style, deep supervision), multi-label: 3 sigmoid channels; input (B, 1, H, W, D).
# Strides per level are (H, W, D): in-plane /16, depth /8, so patches are multiples of (16, 16, 8).
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
    net=dict(
        type="DynUNet",
        spatial_dims=3,
        in_channels=1,
        out_channels=3,
        kernel_size=[3, 3, 3, 3, 3],
        strides=[1, 2, 2, 2, (2, 2, 1)],
        upsample_kernel_size=[2, 2, 2, (2, 2, 1)],
        filters=[32, 64, 128, 256, 320],
        norm_name=("INSTANCE", dict(affine=True)),
        res_block=True,
        deep_supervision=True,
        deep_supr_num=2,
    ),
    # the deep-supervision heads (B, S, 3, ...) weigh 1, 0.5, 0.25
    loss=dict(type="DiceBCELoss", lambda_dice=1.0, lambda_bce=1.0),
    prior_prob=0.02,  # output biases start at logit(0.02): organs fill a few % of a volume
    test_cfg=dict(
        roi_size=(224, 224, 80),
        overlap=0.7,
        mode="gaussian",
        sigma_scale=0.125,
        sw_batch_size=2,
        tta=("flip",),
        amp=True,
    ),
    val_cfg=dict(overlap=0.5, tta=()),
)
