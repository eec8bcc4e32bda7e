# MONAI SegResNet (Myronenko 2018).
# Patch and window sizes must be multiples of 2 ** (len(blocks_down) - 1) = 8 on every axis.
_base_ = ["./monai3d.py"]
model = dict(
    net=dict(
        type="SegResNet",
        spatial_dims=3,
        in_channels=None,  # the image channels of WORK/dataset.json (training.config)
        out_channels=None,  # one per class of WORK/dataset.json (training.config)
        init_filters=32,
        blocks_down=(1, 2, 2, 4),
        blocks_up=(1, 1, 1),
        dropout_prob=0.2,
    ),
)
