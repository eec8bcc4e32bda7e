# UPerNet on ConvNeXt-B: the ConvNeXt-S config with a larger backbone (1st place: trained on `notail`).
_base_ = ["./upernet_convnext-s_2xb16-20k_gitract-384x384.py"]
model = dict(
    backbone=dict(model_name="convnext_base", drop_path_rate=0.4),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512),
)
