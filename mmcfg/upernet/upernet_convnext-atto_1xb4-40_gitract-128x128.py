# Tiny UPerNet (ConvNeXt-Atto, 128x128, 40 iterations) for tests and the demo.
_base_ = [
    "../_base_/models/upernet_timm.py",
    "../_base_/datasets/gitract_25d.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_tiny.py",
]
img_size = (128, 128)
model = dict(
    backbone=dict(model_name="convnext_atto", drop_path_rate=0.0),
    decode_head=dict(in_channels=[40, 80, 160, 320], channels=64),
    auxiliary_head=dict(in_channels=160, channels=32),
)
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False, pin_memory=False)
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False, pin_memory=False)
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=1e-3))
