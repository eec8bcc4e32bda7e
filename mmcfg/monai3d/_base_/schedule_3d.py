# 20k iterations: AdamW, linear warm-up then cosine decay to 1% of the lr, validation and checkpoints every 1k.
# Two patch-size stages (1st place): 160x160x80 patches for 10k iterations, then 224x224x80.
_base_ = ["../../_base_/schedules/iter_based.py"]
# AMP (float16 on CUDA) as before; without CUDA tools/train.py trains in float32 (OptimWrapper) and says so.
optim_wrapper = dict(
    type="AmpOptimWrapper",
    optimizer=dict(type="AdamW", lr=3e-4, weight_decay=1e-5),
    clip_grad=dict(max_norm=12.0),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1 / 500, by_epoch=False, begin=0, end=500),
    # `end` defaults to train_cfg.max_iters
    dict(type="CosineAnnealingLR", eta_min_ratio=0.01, by_epoch=False, begin=500),
]
train_cfg = dict(max_iters=20000, val_interval=1000)
# best by the competition score of the val case-days at their original size
default_hooks = dict(checkpoint=dict(interval=1000, save_best="seg3d/score"))
custom_hooks = [
    dict(type="TrainingCurveHook", keys=("seg3d/score", "seg3d/dice")),
    # --cfg-options custom_hooks.1.stages.1.begin=N moves the switch; custom_hooks.1.stages.K.roi_size=(H,W,D)
    dict(
        type="PatchStageHook",
        stages=[dict(roi_size=(160, 160, 80), begin=0), dict(roi_size=(224, 224, 80), begin=10000)],
    ),
]
