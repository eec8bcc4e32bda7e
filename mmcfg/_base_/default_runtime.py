# Runtime shared by every config of every model kind: the training engine (training.runner.GIRunner: atomic
# checkpoints, weights-only loading, best.pth), logging, the visualizer, the CPU-capable DDP wrapper.
# Each kind's model base names its registered modules in `custom_imports` (with "training.runner" and
# "training.hooks") and, for mmseg models, `default_scope = "mmseg"`.
runner_type = "GIRunner"

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),  # on CPU, tools/train.py initialises gloo before the Runner
)
# DDP that also runs on CPU (device_ids=None without CUDA)
model_wrapper_cfg = dict(type="GIDistributedDataParallel")
# scalars.json + training curves in the work dir; add dict(type="TensorboardVisBackend") for TensorBoard.
# No `name`: mmengine names the visualizer after the run, so every run of one process (--fold all) logs into its own
# folder (a fixed name would hand the first run's visualizer to the next ones).
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="Visualizer", vis_backends=vis_backends)
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=42)
