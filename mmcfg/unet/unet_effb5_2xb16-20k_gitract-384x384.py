# U-Net on EfficientNet-B5: the B4 config with another backbone (1st-place-like, `noanno`).
_base_ = ["./unet_effb4_2xb16-20k_gitract-384x384.py"]
model = dict(
    backbone=dict(model_name="efficientnet_b5"),
    decode_head=dict(in_channels=[24, 40, 64, 176, 512]),
)
