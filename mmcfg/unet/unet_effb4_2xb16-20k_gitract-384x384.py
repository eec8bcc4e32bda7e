# U-Net on EfficientNet-B4, 2.5D [i-2, i, i+2] stacks at 384x384, 2 GPUs x 16, 20k iterations (1st-place-like;
# the 1st place trained its U-Nets on the `noanno` variant: --split-variant noanno).
_base_ = [
    "../_base_/models/unet_timm.py",
    "../_base_/datasets/gitract_25d.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_20k.py",
]
split_variant = "noanno"
model = dict(
    backbone=dict(model_name="efficientnet_b4", drop_path_rate=0.2),
    decode_head=dict(in_channels=[24, 32, 56, 160, 448]),
    test_cfg=dict(tta=["hflip"]),
)
