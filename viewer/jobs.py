"""The viewer's "Segment" button: prepare a folder of scans and run the inference engine on it, one job at a time.

``SegmentJobs.submit(folder, spec)`` checks the request at once (the folder exists and is a format the readers know,
the spec loads and its checkpoints exist), so that a bad folder is answered on the page before anything runs; then
a background thread prepares the folder into a new WORK (``data_prep``: any input format, images only) and predicts
it with the spec (``inference.pipeline.infer``: the engine of ``tools/infer.py``), reporting its phase and the
case-days done. A second request while one runs is refused with a message (:class:`JobBusy`): one process never
runs two jobs on its device at once. Each job writes into its own new folder under ``runs_dir``
(``{time}_{folder name}/work`` and ``pred/`` or ``submission.csv``), so nothing a user made is overwritten.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class JobBusy(RuntimeError):
    """A segmentation is already running."""


@dataclass
class JobStatus:
    """What the page shows. ``state``: ``idle``, ``running``, ``done`` or ``error``; ``phase``: ``prepare`` or
    ``predict``; ``done`` / ``total``: case-days predicted; ``result``: ``{"work", "pred"}`` when done."""

    state: str = "idle"
    phase: str = ""
    folder: str = ""
    spec: str = ""
    done: int = 0
    total: int = 0
    message: str = ""
    result: dict[str, str] | None = None
    started: float = 0.0
    ended: float = 0.0
    id: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _split_of(fmt: str, folder: Path) -> str:
    """The split to predict: the test images when the folder has them, else the training images (their labels,
    when present, then show as the truth)."""
    if fmt == "kaggle":
        test = folder / "test"
        return "test" if test.is_dir() and any(p.name.startswith("case") for p in test.iterdir()) else "train"
    if fmt == "nnunet":
        return "test" if (folder / "imagesTs").is_dir() else "train"
    return "test"


def _safe_name(text: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
    return keep.strip("._") or "scans"


@dataclass
class SegmentJobs:
    """One segmentation at a time, in a background thread (module docstring).

    Args:
        runs_dir: where each job's WORK and predictions go (created).
        device: the engine's device (``cpu``, ``cuda``, ``cuda:N``).
        loaders: stand-in model loaders (tests), as ``tools/infer.py``'s.
        on_done: called with ``(work, pred)`` when a job succeeds (the server opens the result).
    """

    runs_dir: Path
    device: str = "cpu"
    loaders: dict | None = None
    on_done: Callable[[Path, Path], None] | None = None
    status: JobStatus = field(default_factory=JobStatus)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.status.to_json()

    def check(self, folder: str, spec: str) -> tuple[Path, str, Any]:
        """``(folder, format, loaded spec)`` of a request.

        Raises:
            FileNotFoundError, ValueError: what is wrong, naming the folder or the spec.
        """
        from data_prep.readers import detect_format  # noqa: PLC0415
        from ensembles.spec import load_spec  # noqa: PLC0415

        if not folder or not str(folder).strip():
            raise ValueError("give the folder of scans to segment")
        if not spec or not str(spec).strip():
            raise ValueError("give the ensemble spec (a YAML file) to segment with")
        path = Path(str(folder).strip()).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such folder")
        if not path.is_dir():
            raise ValueError(f"{path}: not a folder (give the folder that holds the scans)")
        fmt = detect_format(path)
        spec_path = Path(str(spec).strip()).expanduser()
        if not spec_path.is_file():
            raise FileNotFoundError(f"{spec_path}: no such ensemble spec")
        loaded = load_spec(spec_path)  # relative paths in it start from the server's working folder, as in tools/
        loaded.check_files()
        return path, fmt, loaded

    def submit(self, folder: str, spec: str) -> dict[str, Any]:
        """Check the request and start it; returns the status.

        Raises:
            JobBusy: a job is running. FileNotFoundError, ValueError: a bad request (:meth:`check`).
        """
        with self._lock:
            if self.status.state == "running":
                s = self.status
                raise JobBusy(
                    f"a segmentation is already running ({s.folder}: {s.phase}, {s.done}/{s.total} case-days); "
                    "wait for it to finish"
                )
            self.status = JobStatus(state="running", phase="check", folder=str(folder), spec=str(spec),
                                    started=time.time(), id=self.status.id + 1)  # fmt: skip
        try:
            path, fmt, loaded = self.check(folder, spec)
        except Exception:
            with self._lock:
                self.status.state = "idle"
            raise
        self._thread = threading.Thread(target=self._run, args=(path, fmt, loaded), name="segment", daemon=True)
        self._thread.start()
        return self.snapshot()

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the current job ends (tests, the CLI); returns the status."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()

    def _set(self, **kw: Any) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self.status, k, v)

    def _progress(self, it: Iterable[str]) -> Iterable[str]:
        items = list(it)
        self._set(total=len(items), done=0)
        for i, item in enumerate(items):
            yield item
            self._set(done=i + 1)

    def _run(self, folder: Path, fmt: str, spec: Any) -> None:
        from inference.pipeline import infer  # noqa: PLC0415

        try:
            out = self.runs_dir / f"{time.strftime('%Y%m%d_%H%M%S')}_{_safe_name(folder.name)}"
            n = 1
            while out.exists():
                out = out.with_name(f"{out.name.rsplit('~', 1)[0]}~{n}")
                n += 1
            work = out / "work"
            self._set(phase="prepare", message=f"reading {folder} ({fmt})")
            split = _split_of(fmt, folder)
            if fmt == "kaggle":
                from data_prep.prepare import prepare  # noqa: PLC0415

                prepare(folder, work, split=split)
            else:
                from data_prep.prepare_volumes import prepare_volumes  # noqa: PLC0415

                prepare_volumes(fmt, folder, work, split=split)
            pred = out / ("submission.csv" if fmt == "kaggle" else "pred")
            self._set(phase="predict", message=f"predicting with {spec.name}")
            infer(None, spec, pred, work=work, device=self.device, loaders=self.loaders, progress=self._progress)
            if self.on_done is not None:
                self.on_done(work, pred)
            self._set(state="done", phase="", message=f"done: {pred}", result={"work": str(work), "pred": str(pred)},
                      ended=time.time())  # fmt: skip
        except Exception as e:  # noqa: BLE001 (the page shows any failure; the log keeps the traceback)
            logger.error("segmentation of %s failed:\n%s", folder, traceback.format_exc())
            self._set(state="error", message=f"{type(e).__name__}: {e}", ended=time.time())
