# 1st-place style 3D model: SegResNet, 10k iterations on 160x160x80 patches then 10k on 224x224x80,
# sliding-window inference 224x224x80, overlap 0.7, Gaussian blending, flip TTA.
_base_ = [
    "./_base_/segresnet.py",
    "./_base_/uwmgi_3d.py",
    "../_base_/default_runtime.py",
    "./_base_/schedule_3d.py",
]
