# DynUNet (nnU-Net style, deep supervision), same data, schedule and inference as the SegResNet config.
_base_ = [
    "./_base_/dynunet.py",
    "./_base_/uwmgi_3d.py",
    "../_base_/default_runtime.py",
    "./_base_/schedule_3d.py",
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
