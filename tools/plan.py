"""Plan a WORK (``python -m data_prep plan``) and, on a CUDA device, measure the planned batch sizes.

    python tools/plan.py --work WORK [--gpu-memory 24] [--out mmcfg/generated/NAME] [--models CONFIG ...] --measure

Without ``--measure`` this is ``python -m data_prep plan``: batch sizes come from the planner's memory table
(``data_prep.plan.MEMORY_TABLE``). With ``--measure`` and a CUDA device, each generated config is built and
trained for two iterations (AMP, real samples of the WORK's fold 0) at its planned batch size;
``torch.cuda.max_memory_allocated`` is read, and while it exceeds the plan's budget (``--gpu-memory`` x
``data_prep.plan.MEMORY_SAFETY``) or the step runs out of memory, the batch is halved. The configs, the ensemble
spec and ``WORK/plan/plan.json`` are then rewritten with the measured batch sizes (each ``why`` says what was
measured). Without CUDA it says so and keeps the table's numbers. The WORK needs what training needs (``export
boxes`` when the crop is on, ``export classifier`` for the classifier, ``export 3d`` for the 3D models: the plan's
README lists them).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
from pathlib import Path
from typing import Any

from data_prep.constants import default_work_dir
from data_prep.plan import DEFAULT_GPU_MEMORY_GB, rebatch, run_plan, write_plan

log = logging.getLogger("plan")


def _train_steps(config: str, work: str, batch: int, device: Any, steps: int = 2) -> float:
    """Peak CUDA memory (MB) of ``steps`` AMP training iterations of ``config`` at ``batch`` on ``device``."""
    import torch
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner

    from training.config import build_model, load_config

    cfg = load_config(config, work=work, fold=0)
    init_default_scope(cfg.get("default_scope") or "mmengine")
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg.update(batch_size=batch, num_workers=0, persistent_workers=False, pin_memory=False)
    if "cache_rate" in loader_cfg.dataset:
        loader_cfg.dataset.cache_rate = 0.0  # no volume cache for two steps
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    model = build_model(cfg).to(device).train()
    optim_cfg = copy.deepcopy(cfg.optim_wrapper)
    optim_cfg.type = "AmpOptimWrapper"
    optim = build_optim_wrapper(model, optim_cfg)
    batches = iter(Runner.build_dataloader(loader_cfg, seed=0))
    try:
        for _ in range(steps):
            model.train_step(next(batches), optim)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    finally:
        del model, optim
        torch.cuda.empty_cache()


def measure(plan: dict[str, Any], device: Any) -> dict[str, Any]:
    """The plan with every model's batch size measured on ``device`` (halved until it fits the plan's budget)."""
    import torch

    budget = float(plan["budget_mb"])
    for i, m in enumerate(list(plan["models"])):
        batch = int(m["batch_size"])
        while True:
            try:
                peak = _train_steps(m["config"], plan["work"], batch, device)
            except torch.cuda.OutOfMemoryError:
                peak = math.inf
            if peak <= budget or batch == 1:
                break
            log.info("%s: batch %d needs %.0f MB of %.0f: halving", m["name"], batch, peak, budget)
            batch //= 2
        fits = "fits" if peak <= budget else "does NOT fit even at batch 1"
        why = (
            f"measured on {torch.cuda.get_device_name(device)}: {peak:.0f} MB peak at batch {batch} (AMP, 2 steps), "
            f"{fits} {budget:.0f} MB; the table said {m['batch_size']} ({m['why']['batch_size']})"
        )
        log.info("%s: %s", m["name"], why)
        old = Path(m["config"])
        plan = rebatch(plan, i, batch, why)
        if Path(plan["models"][i]["config"]) != old:
            old.unlink(missing_ok=True)
    return plan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=None, help="WORK folder (default $GITRACT_WORK or ./work)")
    p.add_argument("--out", type=Path, default=None, help="generated configs (default mmcfg/generated/{dataset})")
    p.add_argument("--gpu-memory", type=float, default=DEFAULT_GPU_MEMORY_GB, metavar="GB")
    p.add_argument("--models", nargs="+", default=None, metavar="CONFIG", help="base configs (default: 1st place's)")
    p.add_argument("--workers", type=int, default=1, help="processes for the fingerprint")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier plan and its configs")
    p.add_argument("--measure", action="store_true", help="measure the batch sizes on the CUDA device")
    p.add_argument("--device", default="cuda", help="the CUDA device to measure on (default cuda)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = args.work or default_work_dir()
    try:
        plan = run_plan(work, args.out, args.gpu_memory, args.models, args.workers, args.overwrite, progress=True)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        log.error("%s", e)
        return 2
    if args.measure:
        import torch

        if not torch.cuda.is_available() or not str(args.device).startswith("cuda"):
            log.warning("no CUDA device: the batch sizes stay the memory table's (data_prep.plan.MEMORY_TABLE)")
        else:
            try:
                plan = measure(plan, torch.device(args.device))
            except (FileNotFoundError, ValueError) as e:
                log.error("%s (the plan's README lists the exports training needs)", e)
                return 2
            write_plan(plan, overwrite=True)
    for m in plan["models"]:
        print(m["config"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
