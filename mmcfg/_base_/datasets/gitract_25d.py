# 2.5D slices of data_prep's WORK folder (docs/contracts.md). The top-level keys below are shortcuts that
# training.config.load_config copies into the datasets and pipelines (one --cfg-options changes them all).
work = None  # WORK folder; None = --work, else $GITRACT_WORK, else work/ under the repository
fold = 0
split_variant = "all"  # training side: all | notail | noanno (val is never filtered)
boxes = None  # optional crop-box CSV (id, x0, y0, x1, y1)
img_size = (384, 384)
stack = dict(stride=2, channels=3, norm="max")  # [i-2, i, i+2], each stack divided by its max (1st place)
# the classes the model predicts; None = every class of WORK/dataset.json (the 3 UW-Madison classes without one).
# The model's input: stack.channels planes per image channel of the dataset (modality-major).
num_classes = None
dataset_info = None  # {"classes", "label_kind", "channels"}; None = WORK/dataset.json (inference: the checkpoint's)

albu_train = [
    dict(type="HorizontalFlip", p=0.5),
    dict(
        type="Affine", translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-15, 15), p=0.5
    ),  # shift-scale-rotate
    dict(
        type="OneOf",
        transforms=[
            dict(type="ElasticTransform", alpha=1, sigma=50, p=1.0),
            dict(type="GridDistortion", num_steps=5, distort_limit=0.3, p=1.0),
            dict(type="OpticalDistortion", distort_limit=0.5, p=1.0),
        ],
        p=0.25,
    ),
    dict(type="RandomBrightnessContrast", brightness_limit=0.2, contrast_limit=0.2, p=0.5),
]
train_pipeline = [
    dict(type="LoadGIStack", **stack),
    dict(type="GICropBox"),
    dict(type="GIResize", size=img_size),
    dict(type="AlbuSeg", transforms=albu_train),
    dict(type="PackGIInputs"),
]
test_pipeline = [
    dict(type="LoadGIStack", **stack),
    dict(type="GICropBox"),
    dict(type="GIResize", size=img_size),
    dict(type="PackGIInputs"),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=4,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type="GITractDataset",
        work=work,
        fold=fold,
        split="train",
        variant=split_variant,
        boxes=boxes,
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=16,
    num_workers=4,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type="GITractDataset", work=work, fold=fold, split="val", boxes=boxes, pipeline=test_pipeline, test_mode=True
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="GIMultiLabelMetric", classes=None)  # classes: the shortcut fills them
test_evaluator = val_evaluator
