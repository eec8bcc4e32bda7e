# ConvNeXt-Tiny, 5-channel 2.5D input [i-4 .. i+4 step 2], 1 GPU x batch 32, 8k iterations, 256x256.
_base_ = ["./_base_/cls_default.py"]
model = dict(name="convnext_tiny", kwargs=dict(drop_path_rate=0.2))
data = dict(channels=5)
optim = dict(lr=2e-4, weight_decay=5e-2)
