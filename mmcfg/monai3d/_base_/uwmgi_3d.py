# UW-Madison GI Tract case-day volumes from data_prep's WORK (exports/3d/datalist.json + splits/splits.json).
# Every volume is resampled in-plane to `resample.size` (H, W); the depth (80 or 144 slices) is kept.
data = dict(
    resample=dict(mode="size", size=(256, 256)),  # or dict(mode="spacing", pixdim=(1.5, 1.5)) / dict(mode="none")
    norm=dict(mode="percentile", percentiles=(0.0, 99.5)),  # per volume; "max" and "zscore" exist too
    # fraction of the preprocessed training volumes kept in memory (MONAI CacheDataset): about 66 MB per case-day
    # at 256x256x144 (float32 image + uint8 labels), ~15 GB for a fold; each DDP rank caches only its shard
    cache_rate=1.0,
    num_workers=8,
)
# patches around labels (pos:neg centres), flips on axes (H=0, W=1, D=2), intensity jitter
augment = dict(
    pos=1.0,
    neg=1.0,
    num_samples=2,
    flip_axes=(1, 2),
    flip_prob=0.5,
    intensity_prob=0.5,
    scale_intensity=0.1,
    shift_intensity=0.1,
)
val = dict(overlap=0.5, mode="gaussian", sw_batch_size=2, threshold=0.5)
# inference (segmenters/infer_3d.py): sliding window over the resampled volume, Gaussian blending, flip TTA
infer = dict(
    roi_size=(224, 224, 80), overlap=0.7, mode="gaussian", sigma_scale=0.125, sw_batch_size=2, tta=("flip",), amp=True
)
