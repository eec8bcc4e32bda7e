# A few iterations, for tests and the demo.
_base_ = ["./schedule_20k.py"]
param_scheduler = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=5)]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=40, val_interval=20)
default_hooks = dict(
    logger=dict(interval=5),
    checkpoint=dict(interval=20),
)
