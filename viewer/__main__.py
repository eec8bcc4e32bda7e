"""The local web viewer: three planes, a 3D view, per-class toggles, scores, and a "Segment" button.

    python -m viewer --work WORK [--pred DIR | submission.csv] [--truth DIR | labels.csv] [--port 8765]
    python -m viewer --work demo_out/work_test --pred demo_out/submission.csv --truth demo_out/data/test_truth.csv
    python -m viewer --work WORK --pred PRED --export report/ [--cases KEY ...] [--runs work_dirs/]

Serves the page on http://127.0.0.1:8765 (only this machine; ``--host 0.0.0.0`` opens it to the network on
purpose: the server reads any folder it is given for "Segment"). ``--export DIR`` writes the same page as static
files instead (scores table, the chosen cases, training curves) that open from disk with no server.
``tools/view.py`` is the same command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m viewer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--work", required=True, help="a prepared WORK folder (python -m data_prep prepare)")
    p.add_argument("--pred", default=None, help="predictions: a folder of label volumes, or a submission CSV (Kaggle)")
    p.add_argument("--truth", default=None, help="labels: a folder of label volumes or a CSV (default: WORK's masks)")
    p.add_argument("--runs", nargs="*", default=[], help="training run folders: their training_curve.png are shown")
    p.add_argument("--tolerance", type=float, default=None, help="NSD tolerance in mm (default: one voxel)")
    p.add_argument("--title", default="", help="the page's title (default: the dataset's name)")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=8765)
    g.add_argument("--spec", default="", help='"Segment": the ensemble spec filled in on the page')
    g.add_argument("--folder", default="", help='"Segment": the folder of scans filled in on the page')
    g.add_argument("--runs-dir", default="viewer_runs", help='"Segment": where each job writes its WORK and output')
    g.add_argument("--device", default=None, help='"Segment": cpu, cuda, cuda:N (default: cuda when present)')
    s = p.add_argument_group("picture (headless Chromium)")
    s.add_argument("--screenshot", default=None, metavar="PNG", help="save a picture of the page instead of serving")
    s.add_argument("--case", default=None, help="--screenshot: the case shown (default: the first)")
    s.add_argument("--mode", choices=("pred", "truth", "diff"), default="pred", help="--screenshot: what is shown")
    s.add_argument("--hide", nargs="*", default=[], help="--screenshot: classes hidden")
    s.add_argument("--size", default="1400x900", help="--screenshot: WIDTHxHEIGHT pixels")
    e = p.add_argument_group("static report")
    e.add_argument("--export", default=None, metavar="DIR", help="write a static report to DIR instead of serving")
    e.add_argument("--cases", nargs="*", default=None, help="cases in the report (default: up to 6, worst first)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if a.export:
            from viewer.export import export_report  # noqa: PLC0415

            out = export_report(a.work, a.export, a.pred, a.truth, a.cases, a.runs, a.tolerance, a.title,
                                overwrite=a.overwrite, progress=True)  # fmt: skip
            print(f"wrote {out / 'index.html'} (open it in a browser; no server needed)")
            return 0
        import uvicorn  # noqa: PLC0415

        from common.engine import default_device  # noqa: PLC0415
        from viewer.app import create_app, make_state  # noqa: PLC0415

        state = make_state(a.work, a.pred, a.truth, a.runs, a.runs_dir, a.device or default_device(), a.spec, a.folder,
                           a.tolerance, title=a.title)  # fmt: skip
        app = create_app(state)
        if a.screenshot:
            return _screenshot(app, a)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("viewer").warning(
            "serving on %s: anyone who reaches it can read the folders it is given", a.host
        )
    print(f"viewer: http://{'localhost' if a.host == '127.0.0.1' else a.host}:{a.port}/  (Ctrl+C to stop)")
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    return 0


def _screenshot(app, a: argparse.Namespace) -> int:
    from urllib.parse import urlencode  # noqa: PLC0415

    from viewer.browser import screenshot, serve  # noqa: PLC0415

    try:
        size = tuple(int(v) for v in a.size.lower().split("x"))
        assert len(size) == 2 and min(size) > 0
    except (ValueError, AssertionError):
        raise ValueError(f"--size {a.size!r}: expected WIDTHxHEIGHT, e.g. 1400x900") from None
    query = [("mode", a.mode)] + ([("case", a.case)] if a.case else []) + [("hide", h) for h in a.hide]
    with serve(app) as url:
        out = screenshot(f"{url}?{urlencode(query)}", a.screenshot, size=size)  # type: ignore[arg-type]
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
