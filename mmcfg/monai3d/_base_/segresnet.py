# MONAI SegResNet (Myronenko 2018), multi-label: 3 sigmoid channels in CLASSES order; input (B, 1, H, W, D).
# Patch sizes must be multiples of 2 ** (len(blocks_down) - 1) = 8 on every axis.
model = dict(
    type="SegResNet",
    spatial_dims=3,
    in_channels=1,
    out_channels=3,
    init_filters=32,
    blocks_down=(1, 2, 2, 4),
    blocks_up=(1, 1, 1),
    dropout_prob=0.2,
)
