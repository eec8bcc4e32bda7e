# A tiny CPU config for tests and smoke runs: resnet10t, 64x64, 40 iterations.
_base_ = ["./_base_/cls_default.py"]
model = dict(name="resnet10t", kwargs=dict())
data = dict(img_size=(64, 64), batch_size=16, val_batch_size=32, num_workers=0, aug=dict(affine=0.0, brightness=0.0))
optim = dict(lr=3e-3, weight_decay=1e-4)
schedule = dict(max_iters=40, warmup_iters=5, val_interval=20, ckpt_interval=20, log_interval=10)
