"""The viewer as a static report: the page, the scores table, some cases and the training curves, as plain files.

``export_report(work, out, pred, truth, cases, runs)`` writes::

    out/index.html              the viewer's page, reading its data from the files below (no server)
    out/static/                 its script, style and the vendored NiiVue bundle
    out/data/report.js          window.REPORT: the study (classes, colours, every case's scores) and, per exported
                                case, its description and the name of its data script
    out/data/case_{i}.js        window.REPORT_FILES[key]: the case's NIfTI volumes and meshes, base64
    out/curves/{i}.png          training curves (``training_curve.png`` of --runs)
    out/scores.csv, scores.md   the per-case table: competition score, mean DSC, and DSC / NSD / HD95 per class

The data are scripts, not JSON or NIfTI files fetched by the page, because a page opened from disk (``file://``)
may not fetch files in Chromium; a script tag may load them. The report is written into a temporary folder and
moved into place, so a half-written report never replaces a finished one.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from common.io import markdown_table
from viewer.app import STATIC, check_vendor, curve_name, find_curves, study_json
from viewer.study import Study, case_bundle, open_study, score_all

#: Cases exported when none are named: the worst-scoring ones (all when unscored), at most this many.
DEFAULT_CASES = 6


def _js(name: str, value: object) -> str:
    return f"window.{name} = {json.dumps(value, separators=(',', ':'))};\n"


def scores_table(study: Study) -> pd.DataFrame:
    """One row per case: ``case, score, dsc`` (the case list's) then ``dsc_{class}, nsd_{class}, hd95_{class}``;
    NaN where a case has no scores."""
    rows = []
    for key in study.keys:
        row, s = study.case_row(key), study.cached_scores(key)
        rec = {"case": key, "score": row["score"], "dsc": row["dsc"]}
        for name in study.classes:
            for metric in ("dsc", "nsd", "hd95"):
                rec[f"{metric}_{name}"] = None if s is None else s["classes"][name][metric]
        rows.append(rec)
    table = pd.DataFrame(rows)
    return table.astype({c: float for c in table.columns if c != "case"})  # None -> NaN


def choose_cases(study: Study, cases: Sequence[str] | None, limit: int = DEFAULT_CASES) -> list[str]:
    """The cases to export: those named (checked), else the ``limit`` worst-scoring (the first ones unscored).

    Raises:
        ValueError: a named case that the study does not have (close names suggested).
    """
    if cases:
        unknown = [c for c in cases if c not in study.keys]
        if unknown:
            import difflib  # noqa: PLC0415

            hint = difflib.get_close_matches(unknown[0], study.keys, n=3)
            raise ValueError(
                f"--cases {unknown[0]!r} is not a case of {study.work}" + (f"; close: {hint}" if hint else "")
            )
        return list(dict.fromkeys(cases))
    scores = {k: (study.cached_scores(k) or {}).get("score") for k in study.keys}
    scored = sorted((v, k) for k, v in scores.items() if v is not None)
    return [k for _, k in scored[:limit]] if scored else study.keys[:limit]


def export_report(
    work: str | os.PathLike,
    out: str | os.PathLike,
    pred: str | os.PathLike | None = None,
    truth: str | os.PathLike | None = None,
    cases: Sequence[str] | None = None,
    runs: Sequence[str | os.PathLike] = (),
    tolerance: float | None = None,
    title: str = "",
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write the static report of a study to ``out`` (module docstring); returns ``out``.

    Raises:
        FileExistsError: ``out`` exists and not ``overwrite``. FileNotFoundError, ValueError: as
            :func:`viewer.study.open_study`, an unknown case, a missing run folder or NiiVue bundle.
    """
    check_vendor()
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    study = open_study(work, pred, truth, tolerance=tolerance)
    curves = find_curves(runs)
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = lambda it, desc: tqdm(it, desc=desc, unit="case")  # noqa: E731
    score_all(study, progress=bar and (lambda it: bar(it, "scores")))
    body = study_json(study, title)
    chosen = choose_cases(study, cases)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "data").mkdir(parents=True)
    (tmp / "curves").mkdir()
    shutil.copytree(STATIC, tmp / "static", ignore=shutil.ignore_patterns("index.html"))
    report = {"study": {**body, "cases": [r for r in body["cases"] if r["key"] in chosen]}, "cases": {}, "curves": []}
    for i, key in enumerate(bar(chosen, "cases") if bar else chosen):
        bundle = case_bundle(study, key)
        files = {name: base64.b64encode(data).decode("ascii") for name, data in bundle.files.items()}
        script = f"data/case_{i}.js"
        head = "window.REPORT_FILES = window.REPORT_FILES || {};\n"
        (tmp / script).write_text(f"{head}window.REPORT_FILES[{json.dumps(key)}] = {json.dumps(files)};\n")
        report["cases"][key] = {"meta": bundle.meta, "script": script}
    for i, curve in enumerate(curves):
        shutil.copyfile(curve, tmp / "curves" / f"{i}.png")
        report["curves"].append({"name": curve_name(curve), "url": f"curves/{i}.png"})
    (tmp / "data" / "report.js").write_text(_js("REPORT", report))
    page = (STATIC / "index.html").read_text()
    page = page.replace("<!-- REPORT DATA -->", '<script src="data/report.js"></script>')
    (tmp / "index.html").write_text(page)
    table = scores_table(study)
    table.to_csv(tmp / "scores.csv", index=False)
    (tmp / "scores.md").write_text(markdown_table(table))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
