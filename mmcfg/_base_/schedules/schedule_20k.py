# AdamW, linear warm-up then poly decay, 20k iterations, validation and checkpoints every 2k.
optimizer = dict(type="AdamW", lr=2e-4, betas=(0.9, 0.999), weight_decay=0.01)
optim_wrapper = dict(type="OptimWrapper", optimizer=optimizer, clip_grad=None)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=500),
    dict(type="PolyLR", eta_min=1e-6, power=1.0, begin=500, end=20000, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=20000, val_interval=2000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    # best by the val score, the last two iterations kept (the older one survives a kill during a save)
    checkpoint=dict(
        type="CheckpointHook",
        by_epoch=False,
        interval=2000,
        max_keep_ckpts=2,
        save_last=True,
        save_best="gi/score",
        rule="greater",
    ),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
