# 2.5D segmenters: AdamW, linear warm-up then poly decay, 20k iterations, validation and checkpoints every 2k,
# best checkpoint by the competition score of the val case-days.
_base_ = ["./iter_based.py"]
optim_wrapper = dict(
    type="OptimWrapper", optimizer=dict(type="AdamW", lr=2e-4, betas=(0.9, 0.999), weight_decay=0.01), clip_grad=None
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=500),
    dict(type="PolyLR", eta_min=1e-6, power=1.0, begin=500, end=20000, by_epoch=False),
]
train_cfg = dict(max_iters=20000, val_interval=2000)
default_hooks = dict(checkpoint=dict(interval=2000, save_best="gi/score"))
