# Tiny U-Net (EfficientNet-B0, 128x128, 40 iterations) for tests and the demo.
_base_ = [
    "../_base_/models/unet_timm.py",
    "../_base_/datasets/gitract_25d.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_tiny.py",
]
img_size = (128, 128)
model = dict(
    backbone=dict(model_name="efficientnet_b0", drop_path_rate=0.0),
    decode_head=dict(in_channels=[16, 24, 40, 112, 320], decoder_channels=(64, 48, 32, 24, 16)),
)
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False, pin_memory=False)
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False, pin_memory=False)
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=1e-3))
