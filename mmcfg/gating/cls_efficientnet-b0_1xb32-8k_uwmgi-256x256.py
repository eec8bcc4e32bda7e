# EfficientNet-B0, 3-channel 2.5D input [i-2, i, i+2], 1 GPU x batch 32, 8k iterations, 256x256.
_base_ = ["./_base_/cls_default.py"]
