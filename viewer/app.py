"""The viewer's web server: a Starlette application (through FastAPI) over a :class:`viewer.study.Study`.

Routes (all JSON unless said):

    GET  /                                 the page (static/index.html)
    GET  /static/...                       the page's script, style and the vendored NiiVue bundle
    GET  /api/study                        classes, colours, the case list with scores, the segment job
    GET  /api/case/{key}                   one case: geometry, window, boxes, per-class DSC / NSD / HD95, files
    GET  /api/case/{key}/file/{name}       one of its files (NIfTI ``.nii.gz``, MZ3 meshes)
    POST /api/segment  {folder, spec}      start "Segment" (400: a bad request, named; 409: one is running)
    GET  /api/segment                      the job's state and progress
    GET  /api/curves, /curves/{i}.png      training curves of ``--runs``

Nothing is fetched from the network: the page's scripts are served from ``viewer/static``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from viewer.jobs import JobBusy, SegmentJobs
from viewer.study import DIFF_COLOURS, BundleCache, Study, class_colours, open_study, score_all

STATIC = Path(__file__).resolve().parent / "static"
BUNDLE_JS = STATIC / "vendor" / "niivue.umd.js"
MEDIA = {".gz": "application/gzip", ".mz3": "application/octet-stream", ".png": "image/png"}


def check_vendor() -> None:
    """FileNotFoundError unless the NiiVue bundle was vendored (``python -m viewer.vendor``, run by ``make venv``)."""
    if not BUNDLE_JS.is_file():
        raise FileNotFoundError(
            f"{BUNDLE_JS} is missing: the viewer's NiiVue bundle is fetched at install time; run "
            "`make venv` or `python -m viewer.vendor`"
        )


def find_curves(runs: Sequence[str | Path]) -> list[Path]:
    """The ``training_curve.png`` files under each of ``runs`` (a file itself, or a folder searched), sorted."""
    out: list[Path] = []
    for r in runs:
        p = Path(r)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(p.rglob("training_curve.png"))
        else:
            raise FileNotFoundError(f"--runs {p}: no such file or folder")
    return out


def study_json(study: Study, title: str = "") -> dict[str, Any]:
    """The case list and what the page needs to draw it."""
    return {
        "title": title or study.info.name or study.work.name,
        "work": str(study.work),
        "format": study.info.format,
        "classes": list(study.classes),
        "colours": [list(c) for c in class_colours(len(study.classes))],
        "diff_colours": DIFF_COLOURS,
        "label_kind": study.info.label_kind,
        "pred": None if study.pred is None else str(study.pred.path),
        "truth": None if study.truth is None else str(study.truth.path),
        "cases": [study.case_row(k) for k in study.keys],
        "scoring": len(study.scorable()) > sum(study.cached_scores(k) is not None for k in study.scorable()),
    }


class SegmentRequest(BaseModel):
    folder: str = ""
    spec: str = ""


@dataclass
class ViewerState:
    """The server's state: the study shown (replaced when a segmentation ends), its bundles, the job runner."""

    study: Study
    jobs: SegmentJobs
    curves: list[Path] = field(default_factory=list)
    title: str = ""
    default_spec: str = ""
    default_folder: str = ""
    cache: BundleCache = field(default_factory=BundleCache)

    def open(self, study: Study) -> None:
        self.study = study  # requests that started on the old study finish on it
        self.score_in_background()

    def score_in_background(self) -> None:
        study = self.study
        threading.Thread(target=score_all, args=(study,), name="scores", daemon=True).start()


def create_app(state: ViewerState) -> FastAPI:
    """The FastAPI application serving ``state`` (module docstring)."""
    check_vendor()
    app = FastAPI(title="gitract-seg viewer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.viewer = state
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/study")
    def get_study() -> JSONResponse:
        body = study_json(state.study, state.title)
        body["segment"] = {"folder": state.default_folder, "spec": state.default_spec, **state.jobs.snapshot()}
        body["curves"] = len(state.curves)
        return JSONResponse(body)

    def bundle(key: str):
        study = state.study
        if key not in study.keys:
            raise HTTPException(404, f"no case {key!r} in {study.work}")
        try:
            return state.cache.get(study, key)
        except (ValueError, OSError) as e:
            raise HTTPException(422, f"{key}: {e}") from None

    @app.get("/api/case/{key}")
    def get_case(key: str) -> JSONResponse:
        return JSONResponse(bundle(key).meta)

    @app.get("/api/case/{key}/file/{name}")
    def get_file(key: str, name: str) -> Response:
        files = bundle(key).files
        if name not in files:
            raise HTTPException(404, f"case {key} has no file {name!r}")
        return Response(files[name], media_type=MEDIA.get(Path(name).suffix, "application/octet-stream"))

    @app.post("/api/segment")
    def post_segment(req: SegmentRequest) -> JSONResponse:
        try:
            return JSONResponse(state.jobs.submit(req.folder, req.spec))
        except JobBusy as e:
            return JSONResponse({"error": str(e), **state.jobs.snapshot()}, status_code=409)
        except (FileNotFoundError, ValueError) as e:
            return JSONResponse({"error": str(e)}, status_code=400)

    @app.get("/api/segment")
    def get_segment() -> JSONResponse:
        return JSONResponse(state.jobs.snapshot())

    @app.get("/api/curves")
    def get_curves() -> JSONResponse:
        return JSONResponse([{"name": curve_name(p), "url": f"/curves/{i}.png"} for i, p in enumerate(state.curves)])

    @app.get("/curves/{i}.png")
    def get_curve(i: int) -> FileResponse:
        if not 0 <= i < len(state.curves):
            raise HTTPException(404, f"no curve {i}")
        return FileResponse(state.curves[i])

    return app


def curve_name(p: Path) -> str:
    """A curve's label: the run folder holding it (``work_dirs/unet/fold_0/training_curve.png`` -> ``unet/fold_0``)."""
    parts = p.parent.parts[-2:]
    return "/".join(parts)


def make_state(
    work: str | Path,
    pred: str | Path | None = None,
    truth: str | Path | None = None,
    runs: Sequence[str | Path] = (),
    runs_dir: str | Path = "viewer_runs",
    device: str = "cpu",
    spec: str = "",
    folder: str = "",
    tolerance: float | None = None,
    loaders: dict | None = None,
    title: str = "",
) -> ViewerState:
    """The state of a server over ``work`` (see ``python -m viewer --help`` for the arguments)."""
    study = open_study(work, pred, truth, tolerance=tolerance)
    jobs = SegmentJobs(Path(runs_dir), device=device, loaders=loaders)
    state = ViewerState(study=study, jobs=jobs, curves=find_curves(runs), title=title, default_spec=spec,
                        default_folder=folder)  # fmt: skip
    jobs.on_done = lambda w, p: state.open(open_study(w, p, tolerance=tolerance))
    state.score_in_background()
    return state
