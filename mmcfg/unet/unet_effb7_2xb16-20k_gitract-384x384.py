# U-Net on EfficientNet-B7: the B4 config with another backbone (1st-place-like, `noanno`).
_base_ = ["./unet_effb4_2xb16-20k_gitract-384x384.py"]
model = dict(
    backbone=dict(model_name="efficientnet_b7"),
    decode_head=dict(in_channels=[32, 48, 80, 224, 640]),
)
