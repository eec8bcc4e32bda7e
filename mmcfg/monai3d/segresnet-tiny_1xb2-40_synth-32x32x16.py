# A tiny SegResNet for tests and the demo (CPU, seconds): 48x48 in-plane, 32x32x16 patches, 40 iterations.
_base_ = ["./_base_/segresnet.py", "./_base_/uwmgi_3d.py", "./_base_/schedule_3d.py"]
model = dict(
    init_filters=4, blocks_down=(1, 1, 1), blocks_up=(1, 1), dropout_prob=None, norm=("GROUP", dict(num_groups=2))
)
data = dict(resample=dict(size=(48, 48)), cache_rate=1.0, num_workers=0)
augment = dict(num_samples=1, intensity_prob=0.0)
train = dict(
    stages=[dict(roi_size=(32, 32, 16), iters=40)],
    batch_size=2,
    amp=False,
    val_interval=20,
    log_interval=5,
    checkpoint_interval=10,
)
optimizer = dict(lr=1e-2, clip_grad=None)
scheduler = dict(warmup_iters=0, min_lr_ratio=0.1)
val = dict(overlap=0.25, sw_batch_size=4)
infer = dict(roi_size=(32, 32, 16), overlap=0.5, sw_batch_size=4, amp=False)
