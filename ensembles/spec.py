"""Ensemble specs: which models, how they are gated, fused, thresholded and post-processed.

A spec is a YAML file (``ensembles/configs/*.yaml``)::

    name: first_place
    folds: [0, 1, 2, 3, 4]            # default fold list for checkpoint templates
    models:
      - name: unet_effb4              # unique
        kind: 2.5d                    # 2.5d | 3d | classifier | detector
        role: segment                 # 2.5d only: segment (fused) | gate (the U-Net-count gate)
        config: mmcfg/unet/...py      # model config (detector: none)
        checkpoints: work_dirs/.../fold_{fold}/best.pth   # a template over folds, or a list (one per fold)
        tta: [hflip]                  # 2.5d: hflip, vflip, rot90, rot180, rot270; 3d: flip, ...
        planes: [axial]               # 2.5d: axial, coronal, sagittal (the planes' maps averaged)
        weight: 0.2                   # weight inside its group (2.5d or 3d); normalised
    gate: {method: unet_count, pixel_thr: 0.6, min_pixels: 12}   # or classifier (thresholds, smooth,
                                                                   # min_consecutive) or none
    fusion: {weight_2d: 0.6, weight_3d: 0.4}
    thresholds: 0.4                   # pixel threshold, one or one per class
    post: {max_prob_floor: 0.5, min_component: 0, component_mode: 2d}
    classes: [large_bowel, small_bowel, stomach]   # optional: the classes the per-class values are for

Per-class values (``thresholds``, gate ``thresholds``, ``max_prob_floor``, ``min_component``) are one number, a
list of one value per class (in class order), or a mapping ``{class name: value}`` naming every class. The class
list is the one given to :func:`load_spec` (``classes=``: the data's, from ``WORK/dataset.json`` or a probability
folder's ``meta.json``), else the spec's own ``classes``, else the Kaggle layout's three classes; a spec whose
``classes`` differ from the data's is refused (:meth:`Spec.for_classes`).

Every key is checked against one table of known keys; an unknown key is answered with close matches
(``difflib.get_close_matches``). Relative paths are resolved against the folder given to :func:`load_spec`
(``root``, default the current directory).
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data_prep.dataset import KAGGLE

KINDS: tuple[str, ...] = ("2.5d", "3d", "classifier", "detector")
ROLES: tuple[str, ...] = ("segment", "gate")
GATE_METHODS: tuple[str, ...] = ("none", "classifier", "unet_count")
COMPONENT_MODES: tuple[str, ...] = ("2d", "3d")
#: The planes a 2.5D model can be applied along (``planes`` of a model).
PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
#: The 2.5D TTA names (tensor ops on the input batch: flips along width / height, rotations by k x 90 degrees).
TTA_25D: tuple[str, ...] = ("hflip", "vflip", "rot90", "rot180", "rot270")


def check_tta_25d(tta: Sequence[str], where: str) -> tuple[str, ...]:
    """2.5D TTA names checked against :data:`TTA_25D` (ValueError naming ``where`` and the valid names)."""
    bad = [t for t in tta if t not in TTA_25D]
    if bad:
        raise ValueError(f"{where}: unknown 2.5d tta {bad}; choose from {list(TTA_25D)}")
    return tuple(tta)


def check_planes(planes: Sequence[str], where: str) -> tuple[str, ...]:
    """Plane names checked against :data:`PLANES`: a non-empty list of distinct names (ValueError naming
    ``where``)."""
    if not planes or any(p not in PLANES for p in planes) or len(set(planes)) != len(planes):
        raise ValueError(f"{where}: planes must be a non-empty list of distinct names of {list(PLANES)}, got "
                         f"{list(planes)}")  # fmt: skip
    return tuple(planes)


#: The table of known keys and their defaults, per section.
DEFAULTS: dict[str, dict[str, Any]] = {
    "spec": {
        "name": "ensemble",
        "folds": [0, 1, 2, 3, 4],
        "models": [],
        "gate": {},
        "fusion": {},
        "thresholds": 0.5,
        "post": {},
        "batch_size": 16,
        "classes": None,
    },
    "model": {
        "name": None,
        "kind": None,
        "role": "segment",
        "config": None,
        "checkpoints": None,
        "folds": None,
        "tta": [],
        "planes": ["axial"],
        "weight": 1.0,
        "options": {},
    },
    "gate": {
        "method": "none",
        "pixel_thr": 0.6,
        "min_pixels": 12,
        "thresholds": 0.5,
        "smooth": 0,
        "min_consecutive": 1,
    },
    "fusion": {"weight_2d": 1.0, "weight_3d": 0.0},
    "post": {"max_prob_floor": 0.0, "min_component": 0, "component_mode": "2d"},
}


class SpecError(ValueError):
    """A malformed ensemble spec; the message names the file and the key."""


def _check_keys(section: str, given: dict[str, Any], where: str) -> None:
    known = DEFAULTS[section]
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise SpecError(f"{where}: unknown key {key!r} in {section}{hint} (known keys: {', '.join(known)})")


def _merged(section: str, given: Any, where: str) -> dict[str, Any]:
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise SpecError(f"{where}: {section} must be a mapping, got {type(given).__name__}")
    _check_keys(section, given, where)
    out = copy.deepcopy(DEFAULTS[section])
    out.update(given)
    return out


def _choice(value: Any, choices: tuple[str, ...], what: str, where: str) -> str:
    if value not in choices:
        close = difflib.get_close_matches(str(value), list(choices), n=2, cutoff=0.4)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise SpecError(f"{where}: {what} must be one of {list(choices)}, got {value!r}{hint}")
    return value


def _per_class(
    value: Any, what: str, where: str, classes: tuple[str, ...], lo: float = 0.0, hi: float = 1.0
) -> float | list[float]:
    """One number (kept a number), ``len(classes)`` numbers, or ``{class name: number}`` naming every class (both
    returned as a list in class order)."""
    n = len(classes)
    if isinstance(value, dict):
        unknown = [k for k in value if k not in classes]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), list(classes), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"{where}: {what} names unknown class {unknown[0]!r}{hint} (classes: {list(classes)})")
        missing = [c for c in classes if c not in value]
        if missing:
            raise SpecError(f"{where}: {what} must name every class; missing {missing} (classes: {list(classes)})")
        vals = [value[c] for c in classes]
    else:
        vals = value if isinstance(value, list | tuple) else [value]
        if len(vals) not in (1, n):
            raise SpecError(
                f"{where}: {what} must be one number or {n} (one per class of {list(classes)}), got {value!r}"
            )
    try:
        nums = [float(v) for v in vals]
    except (TypeError, ValueError):
        raise SpecError(f"{where}: {what} must be numbers, got {value!r}") from None
    if any(not lo <= v <= hi for v in nums):
        raise SpecError(f"{where}: {what} must lie in [{lo}, {hi}], got {value!r}")
    return nums[0] if not isinstance(value, list | tuple | dict) else nums


def _classes(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not value or not all(isinstance(c, str) and c for c in value):
        raise SpecError(f"{where}: classes must be a non-empty list of class names, got {value!r}")
    if len(set(value)) != len(value):
        raise SpecError(f"{where}: classes must be unique, got {list(value)}")
    return tuple(value)


@dataclass
class ModelSpec:
    """One model of the ensemble (see the module docstring for the keys)."""

    name: str
    kind: str
    checkpoints: list[Path]
    config: Path | None = None
    role: str = "segment"
    tta: list[str] = field(default_factory=list)
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    planes: list[str] = field(default_factory=lambda: ["axial"])
    folds: list[int] = field(default_factory=list)
    checkpoints_raw: Any = None
    config_raw: Any = None

    def check_files(self) -> None:
        """Raise FileNotFoundError naming the model and the first missing config or checkpoint."""
        if self.config is not None and not self.config.is_file():
            raise FileNotFoundError(f"model {self.name!r}: config {self.config} not found")
        for ck in self.checkpoints:
            if not ck.is_file():
                raise FileNotFoundError(
                    f"model {self.name!r}: checkpoint {ck} not found; train that fold or remove it from the spec"
                )


@dataclass
class Spec:
    """A validated ensemble spec."""

    name: str
    models: list[ModelSpec]
    gate: dict[str, Any]
    fusion: dict[str, float]
    thresholds: float | list[float]
    post: dict[str, Any]
    folds: list[int]
    batch_size: int = 16
    source: str = "<spec>"
    #: the classes the per-class values are for (the data's, the spec's own or the Kaggle layout's)
    classes: tuple[str, ...] = KAGGLE.classes
    #: True when the classes were named (``classes:`` in the spec, ``classes=`` given, or a per-class mapping);
    #: False when they are the Kaggle default, which :meth:`for_classes` may replace
    classes_named: bool = False

    def for_classes(self, classes: Sequence[str]) -> Spec:
        """This spec for data of ``classes`` (in channel order): itself when they are its classes; a copy when its
        classes were only the default and its per-class values fit ``len(classes)``.

        Raises:
            SpecError: the spec names other classes, or gives per-class lists of another length.
        """
        classes = tuple(classes)
        if classes == self.classes:
            return self
        if self.classes_named:
            raise SpecError(
                f"{self.source}: the spec is for classes {list(self.classes)}, the data has {list(classes)}; "
                "tune a spec on this data (python -m ensembles search) or fix its 'classes'"
            )
        out = copy.deepcopy(self)
        out.classes = classes
        values = {
            "thresholds": self.thresholds,
            "gate thresholds": self.gate.get("thresholds"),
            "max_prob_floor": self.post.get("max_prob_floor"),
            "min_component": self.post.get("min_component"),
        }
        for what, v in values.items():
            if isinstance(v, list | tuple) and len(v) != len(classes):
                raise SpecError(
                    f"{self.source}: {what} gives {len(v)} values (one per class of {list(self.classes)}), the data "
                    f"has {len(classes)} classes {list(classes)}; give one value, {len(classes)} values or a mapping "
                    "by class name"
                )
        return out

    def by_kind(self, kind: str, role: str | None = None) -> list[ModelSpec]:
        """Models of one kind (and role), in spec order."""
        return [m for m in self.models if m.kind == kind and (role is None or m.role == role)]

    def model(self, name: str) -> ModelSpec:
        """The model named ``name``; unknown names get close matches."""
        names = [m.name for m in self.models]
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise SpecError(f"{self.source}: no model named {name!r}{hint} (models: {', '.join(names)})")
        return self.models[names.index(name)]

    def check_files(self) -> None:
        """Check that every config and checkpoint exists (before any inference starts)."""
        for m in self.models:
            m.check_files()

    def to_dict(self) -> dict[str, Any]:
        """The spec as YAML-ready data (paths as written in the source when unchanged)."""
        models = []
        for m in self.models:
            d: dict[str, Any] = {"name": m.name, "kind": m.kind}
            if m.kind == "2.5d":
                d["role"] = m.role
            if m.config_raw is not None:
                d["config"] = m.config_raw
            d["checkpoints"] = m.checkpoints_raw
            if m.folds and m.folds != self.folds:
                d["folds"] = m.folds
            if m.tta:
                d["tta"] = list(m.tta)
            if m.planes != ["axial"]:
                d["planes"] = list(m.planes)
            d["weight"] = float(m.weight)
            if m.options:
                d["options"] = m.options
            models.append(d)
        out: dict[str, Any] = {
            "name": self.name,
            "folds": list(self.folds),
            "batch_size": self.batch_size,
            "models": models,
            "gate": dict(self.gate),
            "fusion": dict(self.fusion),
            "thresholds": self.thresholds,
            "post": dict(self.post),
        }
        if self.classes_named:
            out["classes"] = list(self.classes)
        return out

    def dump(self) -> str:
        """YAML text of :meth:`to_dict`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _resolve(p: str, root: Path) -> Path:
    q = Path(os.path.expanduser(str(p)))
    return q if q.is_absolute() else root / q


def _model(raw: Any, i: int, default_folds: list[int], root: Path, where: str) -> ModelSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: models[{i}] must be a mapping, got {type(raw).__name__}")
    d = _merged("model", raw, f"{where}: models[{i}]")
    name = d["name"]
    if not name or not isinstance(name, str):
        raise SpecError(f"{where}: models[{i}] needs a 'name'")
    at = f"{where}: model {name!r}"
    kind = _choice(d["kind"], KINDS, "kind", at)
    role = _choice(d["role"], ROLES, "role", at)
    if role == "gate" and kind != "2.5d":
        raise SpecError(f"{at}: role 'gate' is for 2.5d segmenters (the U-Net-count gate), not {kind}")
    if kind != "detector" and not d["config"]:
        raise SpecError(f"{at}: a {kind} model needs a 'config'")
    folds = d["folds"] if d["folds"] is not None else default_folds
    ck = d["checkpoints"]
    if isinstance(ck, str):
        paths = [ck.format(fold=f) for f in folds] if "{fold}" in ck else [ck]
    elif isinstance(ck, list) and ck and all(isinstance(c, str) for c in ck):
        paths = list(ck)
    else:
        raise SpecError(f"{at}: checkpoints must be a path template with {{fold}} or a list of paths, got {ck!r}")
    tta = d["tta"] or []
    if isinstance(tta, str):
        tta = [tta]
    planes = d["planes"] or ["axial"]
    if isinstance(planes, str):
        planes = [planes]
    try:
        if kind == "2.5d":
            check_tta_25d(tta, at)
        if not isinstance(planes, list):
            raise ValueError(f"{at}: planes must be a list of {list(PLANES)}, got {d['planes']!r}")
        check_planes(planes, at)
    except ValueError as e:
        raise SpecError(str(e)) from None
    if planes != ["axial"] and kind != "2.5d":
        raise SpecError(f"{at}: planes are for 2.5d models, not {kind}")
    try:
        weight = float(d["weight"])
    except (TypeError, ValueError):
        raise SpecError(f"{at}: weight must be a number, got {d['weight']!r}") from None
    if not weight >= 0:
        raise SpecError(f"{at}: weight must be >= 0, got {weight}")
    return ModelSpec(
        name=name,
        kind=kind,
        role=role,
        config=_resolve(d["config"], root) if d["config"] else None,
        checkpoints=[_resolve(p, root) for p in paths],
        tta=[str(t) for t in tta],
        planes=[str(p) for p in planes],
        weight=weight,
        options=dict(d["options"] or {}),
        folds=list(folds),
        checkpoints_raw=ck,
        config_raw=d["config"],
    )


def validate_spec(
    raw: Any,
    source: str = "<spec>",
    root: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
) -> Spec:
    """Check a spec's data against the table of known keys and build a :class:`Spec`.

    Args:
        raw: the parsed YAML (a mapping).
        source: file name used in errors.
        root: folder relative paths are resolved against (default: the current directory).
        classes: the data's classes in channel order (``read_dataset(work).classes``); None: the spec's own
            ``classes``, else the Kaggle layout's.

    Raises:
        SpecError: unknown keys (with close matches), bad values, duplicated names, a gate that lacks its models,
            per-class values that do not fit the classes, a spec whose ``classes`` differ from ``classes``.
    """
    root = Path(root) if root is not None else Path.cwd()
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a spec must be a mapping, got {type(raw).__name__}")
    top = _merged("spec", raw, source)
    own = _classes(top["classes"], source)
    given = _classes(None if classes is None else list(classes), f"{source} (the data)")
    if own is not None and given is not None and own != given:
        raise SpecError(
            f"{source}: the spec is for classes {list(own)}, the data has {list(given)}; tune a spec on this data "
            "(python -m ensembles search) or fix its 'classes'"
        )
    cls = given or own or KAGGLE.classes
    folds = top["folds"]
    if not isinstance(folds, list) or not all(isinstance(f, int) for f in folds):
        raise SpecError(f"{source}: folds must be a list of integers, got {folds!r}")
    if not isinstance(top["models"], list) or not top["models"]:
        raise SpecError(f"{source}: 'models' must be a non-empty list")
    models = [_model(m, i, folds, root, source) for i, m in enumerate(top["models"])]
    names = [m.name for m in models]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise SpecError(f"{source}: model names must be unique, repeated: {dups}")
    gate = _merged("gate", top["gate"], f"{source}: gate")
    mappings = [top["thresholds"], gate["thresholds"]]  # per-class values given by class name name the classes
    gate["method"] = _choice(gate["method"], GATE_METHODS, "gate method", f"{source}: gate")
    gate["thresholds"] = _per_class(gate["thresholds"], "gate thresholds", f"{source}: gate", cls)
    if isinstance(gate["pixel_thr"], list | tuple | dict):
        raise SpecError(f"{source}: gate pixel_thr must be one number, got {gate['pixel_thr']!r}")
    gate["pixel_thr"] = float(_per_class(gate["pixel_thr"], "pixel_thr", f"{source}: gate", cls))
    for key in ("min_pixels", "smooth", "min_consecutive"):
        if not isinstance(gate[key], int) or gate[key] < 0:
            raise SpecError(f"{source}: gate {key} must be an integer >= 0, got {gate[key]!r}")
    if gate["method"] == "classifier" and not any(m.kind == "classifier" for m in models):
        raise SpecError(f"{source}: gate method 'classifier' needs a model of kind classifier")
    if gate["method"] == "unet_count" and not any(m.role == "gate" for m in models):
        raise SpecError(f"{source}: gate method 'unet_count' needs 2.5d models with role: gate")
    if not any(m.kind in ("2.5d", "3d") and m.role == "segment" for m in models):
        raise SpecError(f"{source}: no segmenter (kind 2.5d with role segment, or 3d) to fuse")
    if sum(m.kind == "detector" for m in models) > 1:
        raise SpecError(f"{source}: at most one detector model")
    fusion = _merged("fusion", top["fusion"], f"{source}: fusion")
    for key in ("weight_2d", "weight_3d"):
        try:
            fusion[key] = float(fusion[key])
        except (TypeError, ValueError):
            raise SpecError(f"{source}: fusion {key} must be a number, got {fusion[key]!r}") from None
        if fusion[key] < 0:
            raise SpecError(f"{source}: fusion {key} must be >= 0, got {fusion[key]}")
    has2 = any(m.kind == "2.5d" and m.role == "segment" for m in models)
    has3 = any(m.kind == "3d" for m in models)
    if (has2 and fusion["weight_2d"] > 0) + (has3 and fusion["weight_3d"] > 0) == 0:
        raise SpecError(f"{source}: fusion weights give every segmenter group weight 0")
    if not any(m.weight > 0 and m.kind in ("2.5d", "3d") and m.role == "segment" for m in models):
        raise SpecError(f"{source}: every segmenter has weight 0; give at least one a positive weight")
    post = _merged("post", top["post"], f"{source}: post")
    mappings += [post["max_prob_floor"], post["min_component"]]
    post["max_prob_floor"] = _per_class(post["max_prob_floor"], "max_prob_floor", f"{source}: post", cls)
    post["min_component"] = _per_class(post["min_component"], "min_component", f"{source}: post", cls, 0, 1e9)
    if isinstance(post["min_component"], list):
        post["min_component"] = [int(v) for v in post["min_component"]]
    else:
        post["min_component"] = int(post["min_component"])
    post["component_mode"] = _choice(post["component_mode"], COMPONENT_MODES, "component_mode", f"{source}: post")
    return Spec(
        name=str(top["name"]),
        models=models,
        gate=gate,
        fusion=fusion,
        thresholds=_per_class(top["thresholds"], "thresholds", source, cls),
        post=post,
        folds=list(folds),
        batch_size=int(top["batch_size"]),
        source=source,
        classes=cls,
        classes_named=own is not None or given is not None or any(isinstance(v, dict) for v in mappings),
    )


def load_spec(
    path: str | os.PathLike, root: str | os.PathLike | None = None, classes: Sequence[str] | None = None
) -> Spec:
    """Read and validate a YAML spec (see :func:`validate_spec`; ``classes``: the data's, when known).

    Raises:
        FileNotFoundError: no such file (shipped specs are listed).
        SpecError: invalid YAML or spec.
    """
    p = Path(path)
    if not p.is_file():
        shipped = sorted(x.name for x in (Path(__file__).parent / "configs").glob("*.yaml"))
        raise FileNotFoundError(f"spec {p} not found (shipped specs in ensembles/configs/: {', '.join(shipped)})")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{p}: not valid YAML: {e}") from None
    return validate_spec(raw, str(p), root, classes)
