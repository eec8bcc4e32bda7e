"""The whole recipe on generated data, one command: ``make demo`` (or ``python tools/demo.py``).

The demo is the list :data:`STEPS`: each step is a command a user would type (``Run``) or a file the demo writes
(``Write``: an ensemble spec, the score table, the pictures). Commands are templates filled from the demo's size
and folders; every command's log is in ``{out}/logs/``. A finished step is not run again (``{out}/steps/{name}.done``),
so an interrupted demo resumes where it stopped; ``--overwrite`` starts over. Everything lands in ``{out}``:
``submission.csv``, ``scores.md`` / ``scores.csv``, ``pictures/`` (overlays, training curves), ``report/`` (the
viewer's static report of the test case-days), the runs themselves.

On CPU the demo is deterministic: every model is seeded, data loaders run in the main process, and two runs on
one machine print the same table (another machine, or another number of threads, may change the last digits of
floating-point reductions and, through the tuned thresholds, a few pixels).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from data_prep.constants import CLASSES
from evaluation.pictures import visualize_case_day
from evaluation.scoring import score_files

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("demo")

UNET_CFG = "mmcfg/unet/unet_effb0_1xb4-40_gitract-128x128.py"
UPERNET_CFG = "mmcfg/upernet/upernet_convnext-atto_1xb4-40_gitract-128x128.py"
CLS_CFG = "mmcfg/gating/cls_resnet10t_1xb16-40_toy-64x64.py"
SEG3D_CFG = "mmcfg/monai3d/segresnet-tiny_1xb2-40_synth-32x32x16.py"


@dataclass(frozen=True)
class Size:
    """How much data and training a demo run uses."""

    cases: int
    test_cases: int
    slices: int
    sizes: str  # "" (the four real sizes) or "WxH ..."
    img: int  # input size of the 2D models (px)
    yolo_epochs: int
    yolo_imgsz: int
    cls_iters: int
    seg_iters: int
    seg3d_iters: int
    batch: int


SIZES = {
    # the README's demo: 10 training cases, a few hundred iterations at 128 px, < 15 minutes on 2 CPU cores
    "demo": Size(10, 2, 80, "", 128, 2, 128, 100, 200, 200, 8),
    # the smallest run that exercises every step (the test suite)
    "tiny": Size(2, 1, 12, "64x64", 64, 1, 64, 4, 4, 4, 2),
}


@dataclass(frozen=True)
class Run:
    """A command: ``argv`` after ``python``, each item formatted with the demo's context; an item that is exactly
    ``{name}`` of a list-valued context entry is replaced by the list's items."""

    name: str
    what: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Write:
    """A file (or files) the demo writes itself with ``fn(demo)``."""

    name: str
    what: str
    fn: Callable[[Demo], Any]


def _train(name: str, config: str, iters: str, extra: tuple[str, ...] = ()) -> Run:
    """A training run of fold 0 (any kind: one trainer, one key vocabulary)."""
    every = "{" + name + "_every}"
    opts = (
        f"train_cfg.max_iters={iters}",
        f"train_cfg.val_interval={every}",
        f"default_hooks.checkpoint.interval={every}",
    )
    return Run(
        f"train_{name}",
        f"train {name} on fold 0 ({config})",
        ("tools/train.py", config, "--work", "{work}", "--fold", "0", "--device", "{device}", "--work-dir",
         "{runs}/" + name, "--cfg-options", *opts, *extra),
    )  # fmt: skip


def _oof(name: str, config: str) -> Run:
    """Out-of-fold probabilities of fold 0 of a 2.5D model, on the detector's crops, with hflip TTA."""
    return Run(
        f"oof_{name}",
        f"out-of-fold probabilities of the {name} (val fold 0, detector crops, hflip TTA)",
        ("tools/test.py", config, "{runs}/" + name + "/best.pth", "--fold", "0", "--work", "{work}", "--out",
         "{runs}/" + name + "/oof", "--boxes", "{runs}/yolo/boxes.csv", "--tta", "hflip", "--device", "{device}",
         "--cfg-options", "img_size=({img},{img})", "--overwrite"),
    )  # fmt: skip


def _search(name: str, what: str, models: tuple[str, ...], steps: str = "") -> Run:
    """Tune ``specs/{name}.yaml`` on the out-of-fold predictions of ``models`` into ``specs/{name}_tuned.yaml``."""
    oof = {"unet": "unet={runs}/unet/oof", "upernet": "upernet={runs}/upernet/oof", "seg3d": "seg3d={runs}/seg3d/oof",
           "classifier": "classifier={runs}/cls/oof/cls_probs.csv"}  # fmt: skip
    argv = ("-m", "ensembles", "search", "--oof", *[oof[m] for m in models if m in oof], "--truth", "{data}/train.csv",
            "--spec", "{out}/specs/" + name + ".yaml", "--out", "{out}/specs/" + name + "_tuned.yaml", "--data-root",
            "{data}", "--workers", "2", "--overwrite")  # fmt: skip
    return Run(f"search_{name}", what, argv + (("--steps", steps) if steps else ()))


def _infer(name: str, what: str, spec: str, out: str, overlays: int = 0) -> Run:
    argv = ("tools/infer.py", "--data-root", "{data}", "--split", "test", "--spec", spec, "--out", out, "--device",
            "{device}", "--overwrite", "--no-progress")  # fmt: skip
    return Run(f"infer_{name}", what, argv + (("--overlays", str(overlays)) if overlays else ()))


# ------------------------------------------------------------------------------------------------------ the specs


def _model_entries(d: Demo) -> dict[str, dict]:
    r = d.runs

    def seg(name: str, kind: str, config: str, tta: str) -> dict:
        return dict(name=name, kind=kind, config=config, checkpoints=[str(r / name / "best.pth")], tta=[tta])

    return {
        "detector": dict(name="detector", kind="detector", checkpoints=[str(r / "yolo/weights/best.pt")]),
        "classifier": dict(name="classifier", kind="classifier", config=CLS_CFG, checkpoints=[str(r / "cls/best.pth")]),
        "unet": seg("unet", "2.5d", UNET_CFG, "hflip"),
        "upernet": seg("upernet", "2.5d", UPERNET_CFG, "hflip"),
        "seg3d": seg("seg3d", "3d", SEG3D_CFG, "flip"),
    }


def _write_spec(d: Demo, name: str, models: tuple[str, ...], gate: dict) -> Path:
    entries = _model_entries(d)
    has2d = any(entries[m]["kind"] == "2.5d" for m in models)
    has3d = "seg3d" in models
    spec = {
        "name": name,
        "batch_size": 16,
        "models": [entries[m] for m in models],
        "gate": gate,
        "fusion": {"weight_2d": 0.6 if has2d else 0.0, "weight_3d": (0.4 if has2d else 1.0) if has3d else 0.0},
        "thresholds": 0.5,
        "post": {"max_prob_floor": 0.0, "min_component": 0, "component_mode": "2d"},
    }
    path = d.out / "specs" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _write_no_gate(d: Demo) -> Path:
    """The tuned ensemble with its classifier gate removed."""
    tuned = yaml.safe_load((d.out / "specs" / "ensemble_tuned.yaml").read_text())
    tuned.update(name="ensemble_no_gate", gate={"method": "none"})
    tuned["models"] = [m for m in tuned["models"] if m["kind"] != "classifier"]
    path = d.out / "specs" / "ensemble_no_gate.yaml"
    path.write_text(yaml.safe_dump(tuned, sort_keys=False))
    shutil.copy(d.out / "specs" / "ensemble_tuned.yaml", d.out / "ensemble_tuned.yaml")
    shutil.copy(d.out / "specs" / "ensemble_tuned_report.md", d.out / "ensemble_tuned_report.md")
    return path


#: The single models of the score table: name -> the models of its spec.
SINGLES: dict[str, tuple[str, ...]] = {
    "unet": ("detector", "unet"),
    "upernet": ("detector", "upernet"),
    "seg3d": ("seg3d",),
}
ENSEMBLE = ("detector", "classifier", "unet", "upernet", "seg3d")
#: Rows of the score table: name -> submission file (relative to the demo folder).
SUBMISSIONS = {"ensemble": "submission.csv", "ensemble, no gate": "submissions/ensemble_no_gate.csv"} | {
    n: f"submissions/{n}.csv" for n in SINGLES
}


def _score_table(d: Demo) -> pd.DataFrame:
    """Score every submission (and an empty one) against the held-back test labels: scores.csv and scores.md."""
    truth = d.data / "test_truth.csv"
    empty = d.out / "submissions" / "all_empty.csv"
    t = pd.read_csv(truth, dtype=str, keep_default_na=False)
    t.rename(columns={"segmentation": "predicted"}).assign(predicted="").to_csv(empty, index=False)
    rows = []
    for name, sub in [*((n, d.out / s) for n, s in SUBMISSIONS.items()), ("all empty", empty)]:
        res = score_files(truth, sub, d.data, "test")
        row = {"model": name, "score": res.score, "dice": res.dice, "1-hausdorff": res.hausdorff}
        pc = res.per_class.set_index("class")
        row.update({f"{c} score": float(pc.loc[c, "score"]) for c in CLASSES})
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(d.out / "scores.csv", index=False, float_format="%.5f")
    s = d.size
    md = [
        "# Demo scores on the held-out test tree",
        "",
        f"{s.cases} training cases, {s.test_cases} test cases, seed {d.seed}; competition score 0.4 * Dice + 0.6 * "
        "(1 - Hausdorff), per class and overall. Every row was tuned on the out-of-fold predictions of fold 0 "
        "(single models: pixel thresholds; the ensemble: thresholds, weights, classifier gate, weak-class floors "
        "and component sizes) and then run by tools/infer.py on the test tree; 'ensemble, no gate' is the tuned "
        "ensemble with its gate removed.",
        "",
        "| " + " | ".join(table.columns) + " |",
        "|" + "---|" * len(table.columns),
    ]
    md += [
        "| " + " | ".join(v if isinstance(v, str) else f"{v:.4f}" for v in r) + " |"
        for r in table.itertuples(index=False)
    ]
    (d.out / "scores.md").write_text("\n".join(md) + "\n")
    return table


def _pictures(d: Demo, case_days: int = 2) -> None:
    """Training curves, and for the first test case-days a montage of the prediction and overlays (image | truth
    | prediction) of the slices with the most of each class."""
    for name in ("unet", "upernet", "cls", "seg3d"):
        for png in sorted((d.runs / name).rglob("*curve*.png")):
            shutil.copy(png, d.pics / f"curve_{name}.png")
    test_days = sorted(p.name for p in (d.data / "test").glob("case*/case*_day*"))
    for cd in test_days[:case_days]:
        truth, pred = str(d.data / "test_truth.csv"), str(d.out / "submission.csv")
        visualize_case_day(str(d.data), "test", cd, str(d.pics), truth=truth, pred=pred, slices=1, per_class=True)


# ------------------------------------------------------------------------------------------------------ the list

STEPS: tuple[Run | Write, ...] = (
    Run("synth", "synthetic data in the Kaggle layout (train/, test/, train.csv, test_truth.csv)",
        ("-m", "data_prep", "synth", "--out", "{data}", "--cases", "{all_cases}", "--test-cases", "{test_cases}",
         "--seed", "{seed}", "--workers", "2", "--slices", "{slices}", "{synth_sizes}")),
    Run("prepare", "prepare: volumes, masks, manifest, GroupKFold splits",
        ("-m", "data_prep", "prepare", "--data-root", "{data}", "--out", "{work}", "--workers", "2", "--folds",
         "{folds}")),
    Run("export_classifier", "per-slice presence labels",
        ("-m", "data_prep", "export", "classifier", "--work", "{work}")),
    Run("export_boxes", "ground-truth crop boxes", ("-m", "data_prep", "export", "boxes", "--work", "{work}")),
    Run("export_3d", "MONAI datalists", ("-m", "data_prep", "export", "3d", "--work", "{work}")),
    Run("train_yolo", "crop detector (YOLOv8n from YAML, no pretrained weights), fold 0, every 4th slice",
        ("tools/train_yolo.py", "--work", "{work}", "--fold", "0", "--imgsz", "{yolo_imgsz}", "--epochs",
         "{yolo_epochs}", "--batch", "16", "--workers", "0", "--device", "{device}", "--work-dir", "{runs}/yolo",
         "--step", "4")),
    Run("predict_boxes", "crop boxes for every slice from the detector",
        ("tools/predict_boxes.py", "{runs}/yolo/weights/best.pt", "--work", "{work}", "--out", "{runs}/yolo/boxes.csv",
         "--device", "{device}", "--overwrite")),
    _train("cls", CLS_CFG, "{cls_iters}", ("img_size=({img},{img})",)),
    _train("unet", UNET_CFG, "{seg_iters}",
           ("img_size=({img},{img})", "boxes={work}/exports/boxes.csv", "train_dataloader.batch_size={batch}")),
    _train("upernet", UPERNET_CFG, "{seg_iters}",
           ("img_size=({img},{img})", "boxes={work}/exports/boxes.csv", "train_dataloader.batch_size={batch}")),
    _train("seg3d", SEG3D_CFG, "{seg3d_iters}"),
    _oof("unet", UNET_CFG),
    _oof("upernet", UPERNET_CFG),
    Run("oof_seg3d", "out-of-fold probabilities of the 3D model",
        ("tools/infer_3d.py", SEG3D_CFG, "{runs}/seg3d/best.pth", "--work", "{work}", "--fold", "0", "--out",
         "{runs}/seg3d/oof", "--device", "{device}", "--overwrite")),
    Write("spec_ensemble", "the ensemble spec: crop, classifier gate, U-Net + UPerNet + SegResNet",
          lambda d: _write_spec(d, "ensemble", ENSEMBLE, {"method": "classifier", "thresholds": 0.5})),
    _search("ensemble", "ensemble search on the out-of-fold predictions (weights, thresholds, gate)", ENSEMBLE),
    Write("spec_no_gate", "the tuned ensemble without its gate", _write_no_gate),
    _infer("ensemble", "the tuned ensemble on the held-out test tree", "{out}/specs/ensemble_tuned.yaml",
           "{out}/submission.csv", overlays=6),
    _infer("ensemble_no_gate", "the same ensemble without the classifier gate", "{out}/specs/ensemble_no_gate.yaml",
           "{out}/submissions/ensemble_no_gate.csv"),
    *(step for name, models in SINGLES.items() for step in (
        Write(f"spec_{name}", f"{name} alone", lambda d, n=name, m=models: _write_spec(d, n, m, {"method": "none"})),
        _search(name, f"{name} alone: its pixel thresholds tuned on its OOF", models, steps="thresholds"),
        _infer(name, f"{name} alone on the test tree", "{out}/specs/" + name + "_tuned.yaml",
               "{out}/submissions/" + name + ".csv"),
    )),
    Write("scores", "score every submission against the held-back test labels", _score_table),
    Write("pictures", "training curves, montages and overlays of two test case-days", _pictures),
    Run("prepare_test", "the test tree as a WORK, for the viewer (its scans under the predictions)",
        ("-m", "data_prep", "-q", "prepare", "--data-root", "{data}", "--split", "test", "--out", "{out}/work_test")),
    Run("report", "the viewer's static report: three planes, 3D, scores, training curves ({out}/report/index.html)",
        ("-m", "viewer", "--work", "{out}/work_test", "--pred", "{out}/submission.csv", "--truth",
         "{data}/test_truth.csv", "--runs", "{runs}", "--export", "{out}/report", "--overwrite")),
)  # fmt: skip


class Demo:
    """Runs :data:`STEPS` in order, skipping finished ones, and logs each command."""

    def __init__(self, out: Path, size: Size, seed: int, device: str):
        self.out, self.size, self.seed, self.device = out, size, seed, device
        self.data, self.work, self.runs = out / "data", out / "work", out / "runs"
        self.logs, self.steps, self.pics = out / "logs", out / "steps", out / "pictures"
        for d in (self.logs, self.steps, self.pics, self.runs, out / "specs", out / "submissions"):
            d.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", YOLO_OFFLINE="1")
        self.env.pop("GITRACT_WORK", None)  # the demo names its folders explicitly
        s = size
        self.ctx: dict[str, Any] = {
            **{k: str(v) for k, v in asdict(s).items()},
            "data": str(self.data), "work": str(self.work), "runs": str(self.runs), "out": str(out),
            "device": device, "seed": str(seed), "all_cases": str(s.cases + s.test_cases),
            "folds": str(min(5, s.cases)), "synth_sizes": ["--sizes", *s.sizes.split()] if s.sizes else [],
            "cls_every": str(max(1, s.cls_iters // 2)),
            "unet_every": str(max(1, s.seg_iters // 2)), "upernet_every": str(max(1, s.seg_iters // 2)),
            "seg3d_every": str(max(1, s.seg3d_iters // 4)),
        }  # fmt: skip

    def argv(self, step: Run) -> list[str]:
        """The command of a step with the context filled in."""
        out = [sys.executable]
        for item in step.argv:
            value = self.ctx.get(item[1:-1]) if item.startswith("{") and item.endswith("}") else None
            out.extend(value if isinstance(value, list) else [item.format(**self.ctx)])
        return out

    def run(self, n: int, step: Run | Write) -> None:
        """Run one step unless it is done; raise with the log's tail when a command fails."""
        done = self.steps / f"{step.name}.done"
        if done.exists():
            logger.info("[%2d] %s: done earlier, skipped", n, step.what)
            return
        t0 = time.perf_counter()
        if isinstance(step, Write):
            logger.info("[%2d] %s", n, step.what)
            step.fn(self)
        else:
            log = self.logs / f"{step.name}.log"
            argv = self.argv(step)
            logger.info("[%2d] %s\n      $ %s\n      log: %s", n, step.what, " ".join(argv), log.relative_to(self.out))
            with open(log, "w") as f:
                rc = subprocess.run(argv, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT).returncode
            if rc != 0:
                tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
                raise RuntimeError(f"step {step.name!r} failed (exit {rc}); the end of {log}:\n{tail}")
        dt = time.perf_counter() - t0
        self.timings[step.name] = dt
        done.write_text(f"{dt:.1f}\n")
        logger.info("      ok in %.0f s", dt)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "demo_out")
    p.add_argument("--size", choices=sorted(SIZES), default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--overwrite", action="store_true", help="delete OUT and start over")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = a.out.resolve()
    if a.overwrite and out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    demo = Demo(out, SIZES[a.size], a.seed, a.device)
    logger.info("demo (%s size) in %s", a.size, out)
    for n, step in enumerate(STEPS, 1):
        demo.run(n, step)
    (out / "timings.json").write_text(json.dumps(demo.timings, indent=1))
    table = pd.read_csv(out / "scores.csv")
    logger.info("\n%s\n", table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    logger.info(
        "done in %.0f s. submission: %s\nscores: %s\npictures: %s\nreport: %s\nviewer: %s",
        time.perf_counter() - t0,
        out / "submission.csv",
        out / "scores.md",
        out / "pictures",
        out / "report" / "index.html",
        f"python -m viewer --work {out}/work_test --pred {out}/submission.csv --truth {out}/data/test_truth.csv",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
