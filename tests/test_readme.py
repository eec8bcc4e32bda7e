"""The README runs as written: its quick start on a generated tree at tiny size, and the shipped specs agree with the
commands that train their checkpoints."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from data_prep.constants import CLASSES
from data_prep.layout import read_layout
from data_prep.rle import rle_decode
from ensembles.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TINY = {
    "UNET": "mmcfg/unet/unet_effb0_1xb4-40_gitract-128x128.py",
    "UPERNET": "mmcfg/upernet/upernet_convnext-atto_1xb4-40_gitract-128x128.py",
    "SEG3D": "mmcfg/monai3d/segresnet-tiny_1xb2-40_synth-32x32x16.py",
    "CLS": "mmcfg/gating/cls_resnet10t_1xb16-40_toy-64x64.py",
}


def readme_block(name: str) -> str:
    """The fenced code between ``<!-- name -->`` and ``<!-- /name -->`` in the README."""
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"<!-- {name} -->\s*```bash\n(.*?)```\s*<!-- /{name} -->", text, flags=re.S)
    assert m, f"README.md has no ```bash block between <!-- {name} --> and <!-- /{name} -->"
    return m.group(1)


def run_block(name: str, timeout: int, **variables: str) -> subprocess.CompletedProcess:
    """Run the README block ``name`` with bash (``-euo pipefail``) and its variables set; asserts it succeeds."""
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        OMP_NUM_THREADS="1",
        **variables,
    )
    env.pop("GITRACT_WORK", None)
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_block(name)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-6000:]
    return r


def test_shipped_specs_load() -> None:
    specs = sorted((REPO / "ensembles" / "configs").glob("*.yaml"))
    assert specs
    for path in specs:
        spec = load_spec(path, root=REPO)
        for m in spec.models:
            assert m.config is None or m.config.is_file(), f"{path.name}: model {m.name}: no config {m.config}"


def _train_commands() -> list[tuple[str, str, dict[str, str]]]:
    """``(work dir of fold {fold}, config, options)`` of every line of the README's first-place block."""
    out = []
    for line in readme_block("first_place").strip().splitlines():
        words = shlex.split(line)
        env = {}
        while "=" in words[0]:
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        assert words[0] == "tools/train_folds.sh", line
        config, folds = words[1], words[3]
        assert folds == "0,1,2,3,4", line
        opts = dict(zip(words[4::2], words[5::2]))
        base = env.get("WORK_DIRS", "work_dirs")
        out.append((f"{base}/{Path(config).stem}/fold_{{fold}}", config, opts))
    return out


def test_first_place_spec_names_the_checkpoints_the_readme_trains() -> None:
    spec = load_spec(REPO / "ensembles" / "configs" / "first_place.yaml", root=REPO)
    commands = _train_commands()
    made = {(wd + "/best.pth", cfg) for wd, cfg, _ in commands}
    used = set()
    assert spec.folds == [0, 1, 2, 3, 4]
    for m in spec.models:
        key = (m.checkpoints_raw, m.config_raw)
        assert key in made, f"first_place.yaml model {m.name}: no README command trains {key}"
        used.add(key)
        opts = next(o for wd, cfg, o in commands if (wd + "/best.pth", cfg) == key)
        if m.role == "gate":  # the 1st place's gate U-Nets saw every slice
            assert opts.get("--split-variant") == "all", m.name
        else:
            assert "--split-variant" not in opts, m.name
    assert used == made, f"README trains runs that first_place.yaml does not use: {sorted(made - used)}"
    seeds = [o.get("--cfg-options") for wd, _, o in commands if "seed" in wd]
    assert seeds == ["randomness.seed=2", "randomness.seed=2", "randomness.seed=3"]


@pytest.mark.slow
def test_quickstart_runs_as_written_on_a_generated_tree(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synth = [sys.executable, "-m", "data_prep", "synth", "--out", str(data), "--cases", "5", "--test-cases", "1"]
    synth += ["--slices", "10", "--sizes", "64x64", "--seed", "2"]
    subprocess.run(synth, cwd=REPO, check=True, capture_output=True, timeout=300)
    runs = tmp_path / "runs"
    r = run_block(
        "quickstart",
        1500,
        DATA=str(data),
        WORK=str(tmp_path / "work"),
        RUNS=str(runs),
        FOLDS="0",
        DEVICE="cpu",
        TRAIN_OPTS="--device cpu --cfg-options train_cfg.max_iters=4 train_cfg.val_interval=4 "
        "default_hooks.checkpoint.interval=4",
        YOLO_OPTS="--imgsz 64 --epochs 1 --batch 8 --workers 0 --device cpu",
        YOLO_OFFLINE="1",
        **TINY,
    )

    # the submission: three rows per test slice, valid RLE
    test = read_layout(data, "test", check_images=False)
    sub = pd.read_csv(runs / "submission.csv", dtype=str, keep_default_na=False)
    assert sub["id"].tolist() == [i for i in test["id"] for _ in CLASSES]
    for row in sub.itertuples(index=False):
        rle_decode(row.predicted, (64, 64), row_id=row.id)
    # what it printed last is the submission's score, the same as score.json
    lines = r.stdout.strip().splitlines()
    score_line = next(line for line in reversed(lines) if line.startswith("score "))  # python -m ensembles score
    score = float(score_line.split()[1])
    assert 0.0 <= score <= 1.0
    assert yaml.safe_load((runs / "score.json").read_text())["score"] == pytest.approx(score, abs=1e-5)
    # the tuned spec is valid and names every fold's checkpoints
    tuned = load_spec(runs / "ensemble_tuned.yaml")
    assert [m.name for m in tuned.models] == ["detector", "classifier", "unet", "upernet", "seg3d"]
    assert all(ck.is_file() for m in tuned.models for ck in m.checkpoints)
    assert any(p.name.endswith("_montage.png") for p in (runs / "pictures").glob("*.png"))


@pytest.mark.slow
def test_any_dataset_example_runs_as_written(tmp_path: Path) -> None:
    """The nnU-Net-format example: NIfTI predictions on each test image's grid, and its score file."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    subprocess.run(
        [sys.executable, "-m", "data_prep", "synth-nnunet", "--out", str(data), "--cases", "5", "--test-cases", "2"]
        + ["--shape", "16,64,64", "--regions"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    run_block("any_dataset", 1200, DATA=str(data), WORK=str(tmp_path / "work"), RUNS=str(runs), DEVICE="cpu", ITERS="4")

    for case in ("synth_005", "synth_006"):
        image = sitk.ReadImage(str(data / "imagesTs" / f"{case}_0000.nii.gz"))
        pred = sitk.ReadImage(str(runs / "pred" / f"{case}.nii.gz"))
        assert (pred.GetSize(), pred.GetSpacing(), pred.GetOrigin(), pred.GetDirection()) == (
            image.GetSize(),
            image.GetSpacing(),
            image.GetOrigin(),
            image.GetDirection(),
        )
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3, 4}
    score = yaml.safe_load((runs / "score.json").read_text())
    assert 0.0 <= score["score"] <= 1.0
    assert [row["case_day"] for row in score["dsc_3d"]] == ["synth_005", "synth_006"]
