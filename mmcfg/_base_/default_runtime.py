# Runtime shared by every config: mmseg scope, this project's registered modules, hooks, DDP wrapper.
default_scope = "mmseg"
custom_imports = dict(imports=["segmenters.mm"], allow_failed_imports=False)
runner_type = "GIRunner"  # atomic checkpoints, weights-only load_from, config-checked checkpoints

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),  # on CPU, tools/train.py initialises gloo before the Runner
)
# DDP that also runs on CPU (device_ids=None without CUDA)
model_wrapper_cfg = dict(type="GIDistributedDataParallel")
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=42)
custom_hooks = [dict(type="TrainingCurveHook")]
