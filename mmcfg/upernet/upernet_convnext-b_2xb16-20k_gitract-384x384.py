# UPerNet on ConvNeXt-B, 2.5D stacks at 384x384, 2 GPUs x 16, 20k iterations (1st place: trained on `notail`).
_base_ = [
    "../_base_/models/upernet_timm.py",
    "../_base_/datasets/gitract_25d.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_20k.py",
]
split_variant = "notail"
model = dict(
    backbone=dict(model_name="convnext_base", drop_path_rate=0.4),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512),
    test_cfg=dict(tta=["hflip"]),
)
