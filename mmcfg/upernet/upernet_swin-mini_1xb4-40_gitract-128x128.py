# Tiny UPerNet on a 4-block mmseg Swin (embed 32, window 4, 128x128, 40 iterations) for tests and the demo.
_base_ = [
    "../_base_/models/upernet_swin.py",
    "../_base_/datasets/gitract_25d.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_tiny.py",
]
img_size = (128, 128)
model = dict(
    backbone=dict(embed_dims=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=4, drop_path_rate=0.0),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=64),
    auxiliary_head=dict(in_channels=128, channels=32),
)
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False, pin_memory=False)
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False, pin_memory=False)
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=1e-3))
