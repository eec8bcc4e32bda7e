# U-Net on EfficientNet-B5, 2.5D stacks at 384x384, 2 GPUs x 16, 20k iterations (1st-place-like, `noanno`).
_base_ = [
    "../_base_/models/unet_timm.py",
    "../_base_/datasets/gitract_25d.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_20k.py",
]
split_variant = "noanno"
model = dict(
    backbone=dict(model_name="efficientnet_b5", drop_path_rate=0.2),
    decode_head=dict(in_channels=[24, 40, 64, 176, 512]),
    test_cfg=dict(tta=["hflip"]),
)
