# MONAI DynUNet (nnU-Net style, deep supervision: the heads (B, S, C, ...) weigh 1, 0.5, 0.25 in the loss).
# Strides per level are (H, W, D): in-plane /16, depth /8, so patches are multiples of (16, 16, 8).
_base_ = ["./monai3d.py"]
model = dict(
    net=dict(
        type="DynUNet",
        spatial_dims=3,
        in_channels=None,  # the image channels of WORK/dataset.json (training.config)
        out_channels=None,  # one per class of WORK/dataset.json (training.config)
        kernel_size=[3, 3, 3, 3, 3],
        strides=[1, 2, 2, 2, (2, 2, 1)],
        upsample_kernel_size=[2, 2, 2, (2, 2, 1)],
        filters=[32, 64, 128, 256, 320],
        norm_name=("INSTANCE", dict(affine=True)),
        res_block=True,
        deep_supervision=True,
        deep_supr_num=2,
    ),
)
