# UPerNet on mmseg's Swin-S, 2.5D stacks at 384x384, 2 GPUs x 16, 20k iterations, `notail` training side.
_base_ = [
    "../_base_/models/upernet_swin.py",
    "../_base_/datasets/gitract_25d.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_20k.py",
]
split_variant = "notail"
model = dict(test_cfg=dict(tta=["hflip"]))
