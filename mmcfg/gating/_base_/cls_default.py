# Slice classifier (gating.mm): a timm model with one presence logit per class on 2.5D stacks, trained on the shared
# engine (tools/train.py). AdamW, linear warm-up then cosine to 1%, best checkpoint by the gate score (cls/score).
# Top-level shortcuts (training.config.load_config copies them where they belong; one --cfg-options changes all):
# work, fold, split_variant, img_size, stack (channels -> the datasets; x image channels -> model.in_channels),
# num_classes (None: every class of WORK/dataset.json -> model.num_classes).
_base_ = ["../../_base_/default_runtime.py", "../../_base_/schedules/iter_based.py"]
custom_imports = dict(imports=["training.runner", "training.hooks", "gating.mm"], allow_failed_imports=False)

work = None  # WORK folder; None = --work, else $GITRACT_WORK, else work/ under the repository
fold = 0
split_variant = "all"  # training side: every slice of the fold's training cases (the fault list applies)
img_size = (256, 256)
stack = dict(stride=2, channels=3, norm="max")  # [i-2, i, i+2], each stack divided by its max
num_classes = None  # presence logits; None = every class of WORK/dataset.json
dataset_info = None  # {"classes", "label_kind", "channels"}; None = WORK/dataset.json (inference: the checkpoint's)

model = dict(
    type="SliceClassifierModel",
    model_name="efficientnet_b0",  # any timm model
    in_channels=3,  # stack.channels x the image channels of WORK/dataset.json (training.config)
    num_classes=None,  # from WORK/dataset.json (training.config)
    pretrained=None,  # local file of the timm model's weights; never downloaded
    drop_rate=0.2,
    drop_path_rate=0.1,
    data_preprocessor=dict(type="GIDataPreProcessor"),
)

train_dataloader = dict(
    batch_size=32,
    num_workers=4,
    persistent_workers=False,
    pin_memory=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type="SliceStackDataset",
        work=work,
        fold=fold,
        split="train",
        variant=split_variant,
        channels=3,
        stride=2,
        norm="max",  # or the planner's CT scheme dict(mode="ct", clip=(lo, hi), mean=m, std=s)
        img_size=img_size,
        aug=dict(hflip=0.5, affine=0.7, scale=(0.85, 1.15), rotate=15.0, shift=0.06, brightness=0.15),
    ),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=4,
    persistent_workers=False,
    pin_memory=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type="SliceStackDataset",
        work=work,
        fold=fold,
        split="val",
        channels=3,
        stride=2,
        norm="max",  # or the planner's CT scheme dict(mode="ct", clip=(lo, hi), mean=m, std=s)
        img_size=img_size,
        test_mode=True,
    ),
)
test_dataloader = val_dataloader
# cls/score: the competition score of a perfect segmenter behind the gate at `threshold` (evaluation.classification)
val_evaluator = dict(type="SliceClsMetric", work=work, threshold=0.5, classes=None)
test_evaluator = val_evaluator

optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-2),
    clip_grad=dict(max_norm=5.0),
)
param_scheduler = [
    # lr factor (i + 1) / 200 over the first 200 iterations
    dict(type="LinearLR", start_factor=1 / 200, by_epoch=False, begin=0, end=200),
    # then cosine down to 1% of the lr; no `end`: mmengine ends it at train_cfg.max_iters
    dict(type="CosineAnnealingLR", eta_min_ratio=0.01, by_epoch=False, begin=200),
]
train_cfg = dict(max_iters=8000, val_interval=1000)
# best by the gate score (cls/score)
default_hooks = dict(checkpoint=dict(interval=500, save_best="cls/score"))
custom_hooks = [
    dict(type="TrainingCurveHook", keys=("cls/score", "cls/mean_auc")),
    # the model and input definition in every checkpoint, as plain data (SliceClassifier.load without a config)
    dict(type="ClsInputMetaHook"),
    # {work_dir}/oof/cls_probs.csv: the val slices' probabilities by best.pth, after training
    dict(type="ClsOOFHook"),
]
randomness = dict(seed=42)
