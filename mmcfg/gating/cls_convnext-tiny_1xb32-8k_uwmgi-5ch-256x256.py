# ConvNeXt-Tiny, 5-channel 2.5D input [i-4 .. i+4 step 2], 1 GPU x batch 32, 8k iterations, 256x256.
_base_ = ["./_base_/cls_default.py"]
stack = dict(channels=5)
model = dict(model_name="convnext_tiny", drop_path_rate=0.2)
optim_wrapper = dict(optimizer=dict(lr=2e-4, weight_decay=5e-2))
