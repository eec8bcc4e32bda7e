# Iteration-based schedule: stages run back to back (1st place: 160x160x80 patches, then 224x224x80).
train = dict(
    stages=[dict(roi_size=(160, 160, 80), iters=10000), dict(roi_size=(224, 224, 80), iters=10000)],
    batch_size=2,
    amp=True,
    seed=42,
    val_interval=1000,
    log_interval=50,
    checkpoint_interval=1000,
)
optimizer = dict(type="AdamW", lr=3e-4, weight_decay=1e-5, clip_grad=12.0)
scheduler = dict(type="cosine", warmup_iters=500, min_lr_ratio=0.01)
loss = dict(type="DiceBCELoss", lambda_dice=1.0, lambda_bce=1.0)
