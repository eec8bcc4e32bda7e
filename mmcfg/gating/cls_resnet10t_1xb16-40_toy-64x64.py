# A tiny CPU config for tests and smoke runs: resnet10t, 64x64, 40 iterations.
_base_ = ["./_base_/cls_default.py"]
img_size = (64, 64)
model = dict(model_name="resnet10t")
train_dataloader = dict(
    batch_size=16, num_workers=0, pin_memory=False, dataset=dict(aug=dict(affine=0.0, brightness=0.0))
)
val_dataloader = dict(batch_size=32, num_workers=0, pin_memory=False)
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=3e-3, weight_decay=1e-4))
param_scheduler = [
    dict(type="LinearLR", start_factor=1 / 5, by_epoch=False, begin=0, end=5),
    dict(type="CosineAnnealingLR", eta_min_ratio=0.01, by_epoch=False, begin=5),
]
train_cfg = dict(max_iters=40, val_interval=20)
default_hooks = dict(checkpoint=dict(interval=20), logger=dict(interval=10))
