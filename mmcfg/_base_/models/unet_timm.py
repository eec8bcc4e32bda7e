# U-Net decoder over a timm features_only encoder; multi-label sigmoid output (one channel per class of the WORK),
# BCE + Dice.
default_scope = "mmseg"
custom_imports = dict(imports=["training.runner", "training.hooks", "segmenters.mm"], allow_failed_imports=False)
custom_hooks = [dict(type="TrainingCurveHook", keys=("gi/score", "gi/dice"))]
norm_cfg = dict(type="BN", requires_grad=True)
model = dict(
    type="MultiLabelEncoderDecoder",
    data_preprocessor=dict(type="GIDataPreProcessor"),
    backbone=dict(
        type="GITimmBackbone",
        model_name="efficientnet_b0",
        pretrained=None,  # local file of the timm model's weights; never downloaded
        in_channels=3,  # stack.channels x the image channels of WORK/dataset.json (training.config)
        drop_path_rate=0.2,
    ),
    decode_head=dict(
        type="GIUNetHead",
        in_channels=[16, 24, 40, 112, 320],  # efficientnet_b0 features, strides 2..32
        decoder_channels=(256, 128, 64, 32, 16),  # the 5th block reaches full resolution
        num_classes=None,  # from WORK/dataset.json (training.config)
        prior_prob=0.02,  # classifier bias starts at logit(0.02): organs cover a few % of the pixels
        dropout_ratio=0.0,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=[
            dict(type="MultiLabelBCELoss", loss_weight=1.0),
            dict(type="MultiLabelDiceLoss", loss_weight=1.0),
        ],
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole", threshold=0.5, tta=[]),
)
