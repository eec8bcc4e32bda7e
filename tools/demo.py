"""The whole recipe on generated data, one command: ``make demo`` (or ``python tools/demo.py``).

Steps (each a command a user would type; its log is in ``{out}/logs/``):
synthetic data -> prepare + splits -> exports -> crop detector -> slice classifier -> U-Net -> UPerNet -> 3D model
-> out-of-fold probabilities -> ensemble search -> inference on the held-out test tree -> scores and pictures.

A finished step is not run again (``{out}/steps/{name}.done``), so an interrupted demo resumes where it stopped;
``--overwrite`` starts over. Everything lands in ``{out}``: ``submission.csv``, ``scores.md``/``scores.csv``,
``pictures/`` (overlays, training curves) and the runs themselves.
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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from data_prep.constants import CLASSES

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
    slices: int | None  # None: the real 144 / 80 slices per case-day
    sizes: tuple[str, ...] | None  # None: the four real image sizes
    img: int  # training size of the 2D models (px)
    yolo_epochs: int
    yolo_imgsz: int
    cls_iters: int
    seg_iters: int
    seg3d_iters: int
    batch: int


SIZES = {
    # the README's demo: about 12 cases, a few hundred iterations at 128 px, < 20 minutes on 2 CPU cores
    "demo": Size(12, 3, 80, None, 128, 2, 128, 150, 200, 200, 8),
    # the smallest run that exercises every step (the test suite)
    "tiny": Size(2, 1, 12, ("64x64",), 64, 1, 64, 4, 4, 4, 2),
}


class Demo:
    """Runs the steps in order, skipping finished ones, and logs each command."""

    def __init__(self, out: Path, size: Size, seed: int, device: str):
        self.out, self.size, self.seed, self.device = out, size, seed, device
        self.data, self.work, self.runs = out / "data", out / "work", out / "runs"
        self.logs, self.steps, self.pics = out / "logs", out / "steps", out / "pictures"
        for d in (self.logs, self.steps, self.pics, self.runs, out / "specs"):
            d.mkdir(parents=True, exist_ok=True)
        self.n = 0
        self.timings: dict[str, float] = {}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.env.pop("GITRACT_WORK", None)  # the demo names its folders explicitly

    # ----------------------------------------------------------------------------------------------------------
    def run(self, name: str, what: str, *cmd: str | Path) -> None:
        """Run one command unless its step is done; raise with the log's tail when it fails."""
        self.n += 1
        done = self.steps / f"{name}.done"
        if done.exists():
            logger.info("[%2d] %s: done earlier, skipped", self.n, what)
            return
        log = self.logs / f"{name}.log"
        argv = [str(c) for c in cmd]
        logger.info("[%2d] %s\n      $ %s\n      log: %s", self.n, what, " ".join(argv), log.relative_to(self.out))
        t0 = time.perf_counter()
        with open(log, "w") as f:
            rc = subprocess.run(argv, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT).returncode
        dt = time.perf_counter() - t0
        self.timings[name] = dt
        if rc != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
            raise RuntimeError(f"step {name!r} failed (exit {rc}); the end of {log}:\n{tail}")
        done.write_text(f"{dt:.1f}\n")
        logger.info("      ok in %.0f s", dt)

    def py(self, *args: str | Path) -> list[str]:
        return [sys.executable, *map(str, args)]

    # ----------------------------------------------------------------------------------------------------------
    def data_steps(self) -> None:
        s = self.size
        synth = ["-m", "data_prep", "synth", "--out", self.data, "--cases", str(s.cases + s.test_cases)]
        synth += ["--test-cases", str(s.test_cases), "--seed", str(self.seed), "--workers", "2"]
        if s.slices:
            synth += ["--slices", str(s.slices)]
        if s.sizes:
            synth += ["--sizes", *s.sizes]
        self.run("synth", "synthetic data in the Kaggle layout (train/, test/, train.csv)", *self.py(*synth))
        folds = str(min(5, s.cases))
        self.run(
            "prepare",
            "prepare: volumes, masks, manifest, GroupKFold splits",
            *self.py(
                "-m",
                "data_prep",
                "prepare",
                "--data-root",
                self.data,
                "--out",
                self.work,
                "--workers",
                "2",
                "--folds",
                folds,
            ),
        )
        for kind in ("classifier", "boxes", "3d"):
            self.run(
                f"export_{kind}",
                f"export for the {kind} stage",
                *self.py("-m", "data_prep", "export", kind, "--work", self.work),
            )
        self.run(
            "export_yolo",
            "export the YOLO dataset of fold 0",
            *self.py("-m", "data_prep", "export", "yolo", "--work", self.work, "--fold", "0"),
        )

    def train_steps(self) -> None:
        s, img = self.size, f"({self.size.img},{self.size.img})"
        self.run(
            "train_yolo",
            "crop detector (YOLOv8n from YAML, no pretrained weights)",
            *self.py(
                "tools/train_yolo.py",
                "--work",
                self.work,
                "--fold",
                "0",
                "--imgsz",
                str(s.yolo_imgsz),
                "--epochs",
                str(s.yolo_epochs),
                "--batch",
                "16",
                "--workers",
                "0",
                "--device",
                self.device,
                "--work-dir",
                self.runs / "yolo",
            ),
        )
        self.run(
            "predict_boxes",
            "crop boxes for every slice from the detector",
            *self.py(
                "tools/predict_boxes.py",
                self.runs / "yolo" / "weights" / "best.pt",
                "--work",
                self.work,
                "--out",
                self.runs / "yolo" / "boxes.csv",
                "--device",
                self.device,
            ),
        )
        every = max(1, s.cls_iters // 2)
        self.run(
            "train_cls",
            "slice classifier (timm resnet10t, 3 presence logits)",
            *self.py(
                "tools/train_cls.py",
                CLS_CFG,
                "--work",
                self.work,
                "--fold",
                "0",
                "--device",
                self.device,
                "--work-dir",
                self.runs / "cls",
                "--cfg-options",
                f"data.img_size={img}",
                f"schedule.max_iters={s.cls_iters}",
                f"schedule.val_interval={every}",
                f"schedule.ckpt_interval={every}",
                "data.num_workers=0",
            ),
        )
        boxes = self.work / "exports" / "boxes.csv"
        for name, cfg in (("unet", UNET_CFG), ("upernet", UPERNET_CFG)):
            every = max(1, s.seg_iters // 3)
            self.run(
                f"train_{name}",
                f"2.5D {name} (mmseg, fold 0, crops from the ground-truth boxes)",
                *self.py(
                    "tools/train.py",
                    cfg,
                    "--work",
                    self.work,
                    "--fold",
                    "0",
                    "--work-dir",
                    self.runs / name,
                    "--cfg-options",
                    f"img_size={img}",
                    f"boxes={boxes}",
                    f"train_cfg.max_iters={s.seg_iters}",
                    f"train_cfg.val_interval={every}",
                    f"default_hooks.checkpoint.interval={every}",
                    f"train_dataloader.batch_size={s.batch}",
                ),
            )
        every = max(1, s.seg3d_iters // 2)
        self.run(
            "train_3d",
            "3D SegResNet (MONAI, whole case-day volumes)",
            *self.py(
                "tools/train_3d.py",
                SEG3D_CFG,
                "--work",
                self.work,
                "--fold",
                "0",
                "--device",
                self.device,
                "--work-dir",
                self.runs / "seg3d",
                "--cfg-options",
                f"train.stages.0.iters={s.seg3d_iters}",
                f"train.val_interval={every}",
                f"train.checkpoint_interval={every}",
            ),
        )

    def oof_steps(self) -> None:
        boxes = self.runs / "yolo" / "boxes.csv"
        for name, cfg in (("unet", UNET_CFG), ("upernet", UPERNET_CFG)):
            self.run(
                f"oof_{name}",
                f"out-of-fold probabilities of the {name} (val fold 0, detector crops, hflip TTA)",
                *self.py(
                    "tools/test.py",
                    cfg,
                    self.runs / name / "best.pth",
                    "--fold",
                    "0",
                    "--work",
                    self.work,
                    "--out",
                    self.runs / name / "oof",
                    "--boxes",
                    boxes,
                    "--tta",
                    "hflip",
                    "--device",
                    self.device,
                    "--cfg-options",
                    f"img_size=({self.size.img},{self.size.img})",
                ),
            )
        self.run(
            "oof_seg3d",
            "out-of-fold probabilities of the 3D model",
            *self.py(
                "tools/infer_3d.py",
                SEG3D_CFG,
                self.runs / "seg3d" / "best.pth",
                "--work",
                self.work,
                "--fold",
                "0",
                "--out",
                self.runs / "seg3d" / "oof",
                "--device",
                self.device,
            ),
        )

    # ----------------------------------------------------------------------------------------------------------
    def model_entries(self) -> dict[str, dict]:
        r = self.runs
        return {
            "detector": dict(name="detector", kind="detector", checkpoints=[str(r / "yolo/weights/best.pt")]),
            "classifier": dict(
                name="classifier", kind="classifier", config=CLS_CFG, checkpoints=[str(r / "cls/best.pth")]
            ),
            "unet": self._segmenter("unet", "2.5d", UNET_CFG, "hflip"),
            "upernet": self._segmenter("upernet", "2.5d", UPERNET_CFG, "hflip"),
            "seg3d": self._segmenter("seg3d", "3d", SEG3D_CFG, "flip"),
        }

    def _segmenter(self, name: str, kind: str, config: str, tta: str) -> dict:
        best = self.runs / name / "best.pth"
        return dict(name=name, kind=kind, config=config, checkpoints=[str(best)], tta=[tta], weight=1.0)

    def write_spec(self, path: Path, models: list[str], gate: dict, **extra) -> Path:
        m = self.model_entries()
        has3d = "seg3d" in models
        has2d = any(m[k]["kind"] == "2.5d" for k in models)
        spec = {
            "name": path.stem,
            "batch_size": 16,
            "models": [m[k] for k in models],
            "gate": gate,
            "fusion": {"weight_2d": 0.6 if has2d else 0.0, "weight_3d": (0.4 if has2d else 1.0) if has3d else 0.0},
            "thresholds": 0.5,
            "post": {"max_prob_floor": 0.0, "min_component": 0, "component_mode": "2d"},
        }
        spec.update(extra)
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    def search(self, name: str, what: str, spec: Path, models: list[str], steps: str | None = None) -> Path:
        """Tune ``spec`` on the out-of-fold predictions of ``models``; returns the tuned spec's path."""
        oof = {
            "unet": f"unet={self.runs / 'unet/oof'}",
            "upernet": f"upernet={self.runs / 'upernet/oof'}",
            "seg3d": f"seg3d={self.runs / 'seg3d/oof'}",
            "classifier": f"classifier={self.runs / 'cls/oof/cls_probs.csv'}",
        }
        tuned = spec.with_name(spec.stem + "_tuned.yaml")
        cmd = ["-m", "ensembles", "search", "--oof", *[oof[m] for m in models if m in oof]]
        cmd += [
            "--truth",
            self.data / "train.csv",
            "--spec",
            spec,
            "--out",
            tuned,
            "--data-root",
            self.data,
            "--workers",
            "2",
        ]
        if steps:
            cmd += ["--steps", steps]
        self.run(f"search_{name}", what, *self.py(*cmd, "--overwrite"))
        return tuned

    def ensemble_steps(self) -> Path:
        models = ["detector", "classifier", "unet", "upernet", "seg3d"]
        gate = {"method": "classifier", "thresholds": 0.5}
        base = self.write_spec(self.out / "specs" / "ensemble.yaml", models, gate)
        tuned = self.search(
            "ensemble", "ensemble search on the out-of-fold predictions (weights, thresholds, gate)", base, models
        )
        shutil.copy(tuned, self.out / "ensemble_tuned.yaml")
        shutil.copy(tuned.with_name(tuned.stem + "_report.md"), self.out / "ensemble_tuned_report.md")
        return tuned

    def infer(self, name: str, what: str, spec: Path, overlays: int = 0) -> Path:
        sub = self.out / ("submission.csv" if name == "ensemble" else f"submissions/{name}.csv")
        sub.parent.mkdir(exist_ok=True)
        cmd = [
            "tools/infer.py",
            "--data-root",
            self.data,
            "--split",
            "test",
            "--spec",
            spec,
            "--out",
            sub,
            "--device",
            self.device,
            "--overwrite",
            "--no-progress",
        ]
        if overlays:
            cmd += ["--overlays", str(overlays)]
        self.run(f"infer_{name}", what, *self.py(*cmd))
        return sub

    def test_steps(self, tuned: Path) -> dict[str, Path]:
        specs = self.out / "specs"
        tuned_spec = yaml.safe_load(tuned.read_text())
        no_gate = dict(tuned_spec, name="ensemble_no_gate", gate={"method": "none"})
        no_gate["models"] = [m for m in tuned_spec["models"] if m["kind"] != "classifier"]
        (specs / "ensemble_no_gate.yaml").write_text(yaml.safe_dump(no_gate, sort_keys=False))
        subs = {"ensemble": self.infer("ensemble", "the tuned ensemble on the held-out test tree", tuned, overlays=6)}
        subs["ensemble, no gate"] = self.infer(
            "ensemble_no_gate", "the same ensemble without the classifier gate", specs / "ensemble_no_gate.yaml"
        )
        # each model alone, its pixel thresholds tuned on its out-of-fold predictions
        for name, models in (
            ("unet", ["detector", "unet"]),
            ("upernet", ["detector", "upernet"]),
            ("seg3d", ["seg3d"]),
        ):
            spec = self.write_spec(specs / f"single_{name}.yaml", models, {"method": "none"})
            what = f"{name} alone: its pixel thresholds tuned on its OOF"
            tuned_single = self.search(f"single_{name}", what, spec, models, steps="thresholds")
            subs[name] = self.infer(f"single_{name}", f"{name} alone on the test tree", tuned_single)
        return subs

    # ----------------------------------------------------------------------------------------------------------
    def report(self, subs: dict[str, Path]) -> pd.DataFrame:
        from evaluation.scoring import score_files

        truth = self.data / "test_truth.csv"
        empty_sub = self.out / "submissions" / "all_empty.csv"
        t = pd.read_csv(truth, dtype=str, keep_default_na=False)
        t.rename(columns={"segmentation": "predicted"}).assign(predicted="").to_csv(empty_sub, index=False)
        rows = []
        for name, sub in [*subs.items(), ("all empty", empty_sub)]:
            res = score_files(truth, sub, self.data, "test")
            row = {"model": name, "score": res.score, "dice": res.dice, "1-hausdorff": res.hausdorff}
            pc = res.per_class.set_index("class")
            for c in CLASSES:
                row[f"{c} score"] = float(pc.loc[c, "score"])
            rows.append(row)
        table = pd.DataFrame(rows)
        table.to_csv(self.out / "scores.csv", index=False, float_format="%.5f")
        md = [
            "# Demo scores on the held-out test tree",
            "",
            f"{self.size.cases} training cases, {self.size.test_cases} test cases, seed {self.seed}; "
            "competition score 0.4 * Dice + 0.6 * (1 - Hausdorff), per class and overall. Every row was tuned on "
            "the out-of-fold predictions of fold 0 (single models: pixel thresholds; the ensemble: thresholds, "
            "weights, classifier gate, weak-class floors and component sizes) and then run by tools/infer.py on "
            "the test tree; 'ensemble, no gate' is the tuned ensemble with its gate removed.",
            "",
            "| " + " | ".join(table.columns) + " |",
            "|" + "---|" * len(table.columns),
        ]
        for r in table.itertuples(index=False):
            md.append("| " + " | ".join(v if isinstance(v, str) else f"{v:.4f}" for v in r) + " |")
        (self.out / "scores.md").write_text("\n".join(md) + "\n")
        return table

    def collect_pictures(self, case_days: int = 2) -> None:
        """Training curves, and for the first test case-days a montage of the prediction and overlays (image |
        truth | prediction) of the slices with the most of each class."""
        from evaluation.pictures import visualize_case_day

        for name in ("unet", "upernet", "cls", "seg3d"):
            for png in sorted((self.runs / name).rglob("*curve*.png")):
                shutil.copy(png, self.pics / f"curve_{name}.png")
        test_days = sorted(p.name for p in (self.data / "test").glob("case*/case*_day*"))
        for cd in test_days[:case_days]:
            visualize_case_day(
                str(self.data),
                "test",
                cd,
                str(self.pics),
                truth=str(self.data / "test_truth.csv"),
                pred=str(self.out / "submission.csv"),
                slices=1,
                per_class=True,
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "demo_out")
    p.add_argument("--size", choices=sorted(SIZES), default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="delete OUT and start over")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = a.out.resolve()
    if a.overwrite and out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    demo = Demo(out, SIZES[a.size], a.seed, a.device)
    logger.info("demo (%s size) in %s", a.size, out)
    demo.data_steps()
    demo.train_steps()
    demo.oof_steps()
    tuned = demo.ensemble_steps()
    subs = demo.test_steps(tuned)
    table = demo.report(subs)
    demo.collect_pictures()
    (out / "timings.json").write_text(json.dumps(demo.timings, indent=1))
    logger.info("\n%s\n", table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    logger.info(
        "done in %.0f s. submission: %s\nscores: %s\npictures: %s",
        time.perf_counter() - t0,
        out / "submission.csv",
        out / "scores.md",
        out / "pictures",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
