# Slice classifier defaults (gating.cls_train.DEFAULTS spelt out): timm model, 2.5D input, AdamW, warmup + cosine.
model = dict(name="efficientnet_b0", pretrained=None, kwargs=dict(drop_rate=0.2, drop_path_rate=0.1))
data = dict(
    channels=3,
    stride=2,
    img_size=(256, 256),
    batch_size=32,
    val_batch_size=64,
    num_workers=4,
    aug=dict(hflip=0.5, affine=0.7, scale=(0.85, 1.15), rotate=15.0, shift=0.06, brightness=0.15),
)
optim = dict(lr=1e-3, weight_decay=1e-2, grad_clip=5.0)
schedule = dict(
    max_iters=8000, warmup_iters=200, min_lr_ratio=0.01, val_interval=1000, ckpt_interval=500, log_interval=50
)
seed = 42
