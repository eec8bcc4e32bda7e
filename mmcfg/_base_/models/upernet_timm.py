# UPerNet over a timm features_only encoder (ConvNeXt by default); multi-label sigmoid outputs, BCE + Dice.
default_scope = "mmseg"
custom_imports = dict(imports=["training.runner", "training.hooks", "segmenters.mm"], allow_failed_imports=False)
custom_hooks = [dict(type="TrainingCurveHook", keys=("gi/score", "gi/dice"))]
norm_cfg = dict(type="BN", requires_grad=True)
model = dict(
    type="MultiLabelEncoderDecoder",
    data_preprocessor=dict(type="GIDataPreProcessor"),
    backbone=dict(
        type="GITimmBackbone",
        model_name="convnext_small",
        pretrained=None,
        in_channels=3,  # stack.channels x the image channels of WORK/dataset.json (training.config)
        out_indices=(0, 1, 2, 3),  # timm ConvNeXt needs them explicit
        drop_path_rate=0.3,
    ),
    decode_head=dict(
        type="MultiLabelUPerHead",
        in_channels=[96, 192, 384, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=None,  # from WORK/dataset.json (training.config)
        prior_prob=0.02,  # classifier bias starts at logit(0.02): organs cover a few % of the pixels
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=[
            dict(type="MultiLabelBCELoss", loss_weight=1.0),
            dict(type="MultiLabelDiceLoss", loss_weight=1.0),
        ],
    ),
    auxiliary_head=dict(
        type="MultiLabelFCNHead",
        in_channels=384,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=None,  # from WORK/dataset.json (training.config)
        prior_prob=0.02,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=[dict(type="MultiLabelBCELoss", loss_weight=0.4, loss_name="loss_aux_bce")],
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole", threshold=0.5, tta=[]),
)
