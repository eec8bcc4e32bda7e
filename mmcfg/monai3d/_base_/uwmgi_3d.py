# Case-day volumes of data_prep's WORK (exports/3d/fold_k/datalist.json + splits/splits.json), any dataset: the
# classes and image channels come from WORK/dataset.json. The top-level keys work / fold / split_variant / norm /
# resample / num_classes are shortcuts that training.config.load_config copies into the datasets and the model (one
# --cfg-options value changes them all). Every volume is normalised per volume and resampled in-plane to
# `resample.size` (H, W); the depth (80 or 144 slices) is kept unless `resample.spacing` asks for a 3D spacing.
# Training, validation and inference (test_dataloader) all preprocess with the top-level `norm` and `resample`.
work = None  # WORK folder; None = --work, else $GITRACT_WORK, else work/ under the repository
fold = 0
split_variant = "all"  # the 3D models train on every training case-day of the fold
norm = dict(mode="percentile", percentiles=(0.0, 99.5))  # per volume; "max" and "zscore" exist too
# in-plane to a size; or dict(mode="spacing", pixdim=(sy, sx)) in-plane; or dict(mode="spacing", spacing=(sz, sy, sx))
# in all three axes (anisotropic volumes: each volume's spacing comes from WORK/dataset.json, the prediction is
# resampled back to the volume's grid); or dict(mode="none")
resample = dict(mode="size", size=(256, 256))
num_classes = None  # the classes the model predicts; None = every class of WORK/dataset.json
dataset_info = None  # {"classes", "label_kind", "channels"}; None = WORK/dataset.json (inference: the checkpoint's)

train_dataloader = dict(
    batch_size=2,
    num_workers=8,
    persistent_workers=False,  # PatchStageHook restarts the workers at each patch-size stage
    pin_memory=True,
    # an infinite stream in which each draw carries its own seed: resumed runs see the same patches
    sampler=dict(type="CaseDayPatchSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(
        type="CaseDayPatchDataset",
        work=work,
        fold=fold,
        variant=split_variant,
        roi_size=(160, 160, 80),  # the first stage of PatchStageHook
        norm=norm,
        resample=resample,
        # fraction of the preprocessed training volumes kept in memory (MONAI CacheDataset): about 66 MB per
        # case-day at 256x256x144 (float32 image + uint8 labels), ~15 GB for a fold; each DDP rank caches its share
        cache_rate=1.0,
        # patches around labels (pos:neg centres), num_samples per case-day (a batch holds batch_size x
        # num_samples patches), flips on axes (H=0, W=1, D=2), intensity jitter
        pos=1.0,
        neg=1.0,
        num_samples=2,
        flip_axes=(1, 2),
        flip_prob=0.5,
        intensity_prob=0.5,
        scale_intensity=0.1,
        shift_intensity=0.1,
    ),
)
# whole case-days, one per batch, with the original-size masks for the competition score
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=False,
    pin_memory=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type="CaseDayVolumeDataset",
        work=work,
        fold=fold,
        split="val",
        norm=norm,
        resample=resample,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="CaseDay3DMetric", threshold=0.5, classes=None)  # classes: the shortcut fills them
test_evaluator = val_evaluator
