# A tiny SegResNet for tests and the demo (CPU, seconds): 48x48 in-plane, 32x32x16 patches, 40 iterations.
_base_ = [
    "./_base_/segresnet.py",
    "./_base_/uwmgi_3d.py",
    "../_base_/default_runtime.py",
    "./_base_/schedule_3d.py",
]
model = dict(
    net=dict(
        init_filters=4, blocks_down=(1, 1, 1), blocks_up=(1, 1), dropout_prob=None, norm=("GROUP", dict(num_groups=2))
    ),
    test_cfg=dict(roi_size=(32, 32, 16), overlap=0.5, sw_batch_size=4, amp=False),
    val_cfg=dict(overlap=0.25),
)
train_dataloader = dict(
    num_workers=0,
    pin_memory=False,
    dataset=dict(roi_size=(32, 32, 16), num_samples=1, intensity_prob=0.0),
)
val_dataloader = dict(num_workers=0)
test_dataloader = val_dataloader
resample = dict(size=(48, 48))  # every dataset (shortcut)
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(lr=1e-2), clip_grad=None)
param_scheduler = [dict(type="CosineAnnealingLR", eta_min_ratio=0.1, by_epoch=False, begin=0)]
train_cfg = dict(max_iters=40, val_interval=20)
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=10))
custom_hooks = [
    dict(type="TrainingCurveHook", keys=("seg3d/score", "seg3d/dice")),
    dict(type="PatchStageHook", stages=[dict(roi_size=(32, 32, 16), begin=0)]),
]
