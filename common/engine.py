"""Training-run helpers shared by every stage that trains a model: distributed set-up, atomic
checkpoints, safe loading, seeding.

A leaf module: it imports no stage of the project. Distributed training goes through PyTorch
distributed (``torchrun`` or Slurm sets the environment); nothing here schedules processes.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist

from common.io import atomic_write

logger = logging.getLogger(__name__)

LAUNCHERS = ("none", "pytorch", "slurm")


def _slurm_env() -> None:
    """Fill torchrun's variables from Slurm's (as mmengine does for ``launcher='slurm'``)."""
    proc_id = int(os.environ["SLURM_PROCID"])
    ntasks = int(os.environ["SLURM_NTASKS"])
    node_list = os.environ["SLURM_NODELIST"]
    num_gpus = max(torch.cuda.device_count(), 1)
    addr = subprocess.getoutput(f"scontrol show hostname {node_list} | head -n1")
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ.setdefault("MASTER_ADDR", addr)
    os.environ["WORLD_SIZE"] = str(ntasks)
    os.environ["LOCAL_RANK"] = str(proc_id % num_gpus)
    os.environ["RANK"] = str(proc_id)


def setup_distributed(launcher: str = "none", timeout: datetime.timedelta | None = None) -> tuple[int, int]:
    """Initialise the default process group for ``launcher`` and return ``(rank, world_size)``.

    ``nccl`` when CUDA is available, else ``gloo`` (so multi-process runs can be tested on CPU).
    ``none`` initialises nothing and returns ``(0, 1)``. Calling it twice is harmless. ``timeout``: how long a
    collective waits for the other processes (default torch's; inference parts that end hours apart need more).

    Raises:
        ValueError: unknown launcher.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    if launcher == "none":
        return 0, 1
    if launcher == "slurm":
        _slurm_env()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        dist.init_process_group(backend=backend, **({} if timeout is None else {"timeout": timeout}))
    return dist.get_rank(), dist.get_world_size()


def teardown_distributed() -> None:
    """Destroy the default process group (nothing without one), once this process's collectives are done: a process
    that exits with the group alive can abort in the backend's threads at interpreter exit ("terminate called
    without an active exception"), failing a run that had finished. No barrier: after an error on one rank the
    others are not waited for (torchrun ends them)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(rc: int) -> NoReturn:
    """End a command-line process with exit status ``rc``.

    Under a distributed launcher (``LOCAL_RANK`` set by ``torchrun``) the interpreter's own teardown is skipped:
    logs and standard streams are flushed, then ``os._exit``. Backend threads (gloo) can still abort a finished
    process in C++ destructors at interpreter exit ("terminate called without an active exception", exit -6) after
    :func:`teardown_distributed`, which turns a finished run into a failed one. Elsewhere: ``sys.exit(rc)``.
    """
    if os.environ.get("LOCAL_RANK") is None:
        sys.exit(rc)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``: the default ``--device`` of the tools."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process; ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and when not distributed)."""
    return rank_and_world()[0] == 0


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (temporary file, fsync, rename over ``path``).

    A process killed mid-write leaves at most a ``.tmp`` file behind, never a truncated checkpoint.
    """
    atomic_write(path, lambda f: torch.save(obj, f))


def load_weights(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint's weights safely (``weights_only=True``: no code runs).

    Accepts a bare state dict or a dict with ``state_dict`` / ``model`` / ``meta``.

    Raises:
        FileNotFoundError: the file does not exist (the message says where weights come from).
        ValueError: the file cannot be read as a weights-only checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path}. Weights are read from local files only; nothing is downloaded."
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(
            f"cannot load {path} with weights_only=True ({type(e).__name__}: {e}). If this is a full training "
            "checkpoint of your own run, resume from it instead; only trusted files may be unpickled."
        ) from e
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model"):
            if key in ckpt and isinstance(ckpt[key], dict):
                return ckpt[key]
    return ckpt


def load_trusted(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a full checkpoint (optimizer state, history) with pickle: only for resuming your own runs.

    Loading a pickle runs code: never call this on a file you did not make.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=False)
