# Iteration-based training, shared by every model kind (2.5D, classifier, 3D): the loops and the default hooks.
# A kind's schedule sets the optimizer, the parameter schedulers, the lengths and the score that picks the best
# checkpoint (default_hooks.checkpoint.save_best: gi/score, cls/score, seg3d/score).
train_cfg = dict(type="IterBasedTrainLoop")
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    # best by the kind's validation score (best.pth points at it); the last two iterations kept (the older one
    # survives a kill during a save)
    checkpoint=dict(
        type="CheckpointHook",
        by_epoch=False,
        max_keep_ckpts=2,
        save_last=True,
        save_best=None,
        rule="greater",
    ),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
