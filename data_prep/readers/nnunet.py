"""The nnU-Net v2 raw format: reader (``python -m data_prep prepare --format nnunet``) and writer of predictions.

A data root (nnU-Net's ``Dataset{ID}_{name}`` folder) holds::

    dataset.json                  channel_names {"0": "CT", ...}, labels, numTraining, file_ending
                                  [, regions_class_order, name]
    imagesTr/{case}_{XXXX}{ending}  one file per case and channel (XXXX = 0000, 0001, ...)
    labelsTr/{case}{ending}         the label volume of a case, on its image's grid
    imagesTs/{case}_{XXXX}{ending}  test images (``--split test``), no labels

Files are NIfTI, NRRD or MetaImage (``file_ending`` ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ...), read with
:mod:`data_prep.readers.medical` (SimpleITK, the geometry nnU-Net itself reads and writes).

**Classes** are the ``labels`` other than ``background`` (which must be 0) and ``ignore`` (nnU-Net's ignore label,
kept out of the classes; its value is accepted in label files), in the order of ``dataset.json``; names are made
identifiers (other characters become ``_``).

- Every label an integer: ``exclusive`` classes (a label map in WORK); class ``c`` is the voxels of its value.
- Any label a list of values (nnU-Net's region-based training): ``overlapping`` classes (a bit field in WORK);
  class ``c`` (a region) is the voxels whose value is in its list; a plain integer is a one-value region.
  ``regions_class_order`` (one value per region, required) is nnU-Net's rule for turning regions back into a
  label map. A value in a region list must be declared elsewhere too: as an integer label, a
  ``regions_class_order`` value, or in another region (values shared by regions encode overlaps, e.g. 3 = both in
  ``a: [1, 3], b: [2, 3]``); a value that only one region lists is taken for a typo and refused.

``info.source`` keeps ``labels`` (as in ``dataset.json``), ``regions_class_order``, ``file_ending``,
``label_values`` (``{class: [values]}``, the engine's mapping), ``ignore_values`` and ``channel_names``.
**Intensity** kind: ``CT`` when channel 0 is named CT (any case), ``MR`` for MR names (MR, MRI, T1, T2, FLAIR,
ADC, DWI, PD, ...), else ``other``. **Slice axis** of a volume: the array axis with the largest spacing (ties: axis
0, SimpleITK's z). **Groups**: the case id (``--group-by`` to group cases of one patient).

**Predictions** (:func:`write_prediction`): ``{key}{file_ending}``, a label map with the source image's exact grid
(spacing, origin, direction copied, arrays moved back from the WORK axes), uint8 (uint16 for values above 255):

- exclusive classes: the value of the class; where several masks are on, the highest ``probs`` wins (without
  ``probs``, the last class in class order);
- overlapping classes (regions): the exact inverse of the reading rule: each voxel gets the label value whose
  region membership is the voxel's set of classes (``whole`` + ``core`` -> the value in both regions and no
  other); a set of classes that no single value has (or that several share) falls back to nnU-Net's rule: paint
  each region's ``regions_class_order`` value in class order, later regions over earlier ones.

So a prediction that equals the labels writes back the label file voxel for voxel (when every value has its own
membership). :func:`read_prediction` reads such a file back to masks (for scoring folders of label volumes).
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.dataset import DatasetInfo, VolumeInfo
from data_prep.readers.base import LoadedVolume, SourceVolume, source_geometry
from data_prep.readers.medical import ENDINGS, MedicalImage, read_image, write_image

logger = logging.getLogger(__name__)

#: Keys a ``dataset.json`` must have (nnU-Net v2's own requirement).
REQUIRED_KEYS: tuple[str, ...] = ("channel_names", "labels", "numTraining", "file_ending")
#: Channel name prefixes (lower case, letters and digits only) taken as MR.
MR_PREFIXES: tuple[str, ...] = ("mr", "t1", "t2", "flair", "adc", "dwi", "pd", "swi", "dce", "bold", "cine", "lge")
#: Relative spacing difference under which two axes tie for the slice axis.
SPACING_TIE = 1e-6


def _warn(message: str) -> None:
    from data_prep.layout import LayoutWarning  # noqa: PLC0415 - the Kaggle layout module is heavier

    logger.warning(message)
    warnings.warn(message, LayoutWarning, stacklevel=3)


def intensity_kind(channel_name: str) -> str:
    """``"CT"``, ``"MR"`` or ``"other"`` for an nnU-Net channel name.

    >>> intensity_kind("ct"), intensity_kind("T2w"), intensity_kind("FLAIR"), intensity_kind("zscore")
    ('CT', 'MR', 'MR', 'other')
    """
    name = re.sub(r"[^0-9a-z]", "", str(channel_name).lower())
    if name == "ct":
        return "CT"
    return "MR" if name.startswith(MR_PREFIXES) else "other"


def default_slice_axis(spacing: Sequence[float]) -> int:
    """The array axis with the largest spacing; ties go to the lowest axis (axis 0 = SimpleITK's z).

    >>> default_slice_axis((1.0, 1.0, 1.0)), default_slice_axis((0.8, 0.9, 2.5)), default_slice_axis((0.7, 3.0, 3.0))
    (0, 2, 1)
    """
    top = max(float(s) for s in spacing)
    return next(i for i, s in enumerate(spacing) if float(s) >= top * (1 - SPACING_TIE))


def _class_name(label: str) -> str:
    name = re.sub(r"[^0-9A-Za-z_]", "_", str(label).strip())
    return name if name else "_"


def _int_value(v: Any, where: str, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v or v < 0:
        hint = " (regions list label values, not label names)" if isinstance(v, str) else ""
        raise ValueError(f"{where}: {what} must be a non-negative integer, got {v!r}{hint}")
    return int(v)


def read_dataset_json(root: str | os.PathLike) -> dict[str, Any]:
    """``root/dataset.json`` as a dict, checked for nnU-Net's required keys.

    Raises:
        FileNotFoundError: no ``dataset.json``.
        ValueError: not JSON, not an object, or missing keys (named).
    """
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: an nnU-Net raw dataset needs dataset.json beside imagesTr/")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; nnU-Net v2's dataset.json needs {list(REQUIRED_KEYS)}")
    return meta


def dataset_info(meta: Mapping[str, Any], where: str = "dataset.json", name: str = "") -> DatasetInfo:
    """The :class:`DatasetInfo` of an nnU-Net ``dataset.json`` (rules in the module docstring; no volumes yet).

    Raises:
        ValueError: bad ``channel_names``, ``labels`` (no background 0, non-integer values, a value used twice,
            a region naming an unknown label value), ``regions_class_order`` or ``file_ending`` (named).
    """
    ch = meta["channel_names"]
    if not isinstance(ch, Mapping) or not ch:
        raise ValueError(f"{where}: channel_names must be a non-empty object {{'0': 'CT', ...}}, got {ch!r}")
    if sorted(ch, key=str) != sorted((str(i) for i in range(len(ch))), key=str):
        raise ValueError(f"{where}: channel_names keys must be '0'..'{len(ch) - 1}', got {sorted(ch)}")
    channels = tuple(str(ch[str(i)]) for i in range(len(ch)))

    ending = str(meta["file_ending"])
    if ending.lower() not in ENDINGS:
        raise ValueError(
            f"{where}: file_ending {ending!r} is not a volume format read here (use one of {list(ENDINGS)}; "
            "2D images belong to the slices format)"
        )

    labels = meta["labels"]
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError(f"{where}: labels must be an object {{'background': 0, 'name': value, ...}}, got {labels!r}")
    if "background" not in labels or labels["background"] != 0:
        raise ValueError(f"{where}: labels must have 'background': 0, got {labels.get('background')!r}")
    entries = [(k, v) for k, v in labels.items() if k not in ("background", "ignore")]
    if not entries:
        raise ValueError(f"{where}: labels declare no class besides background")
    ignore = [] if "ignore" not in labels else [_int_value(labels["ignore"], where, "labels['ignore']")]
    regions = any(isinstance(v, list | tuple) for _, v in entries)

    values: dict[str, list[int]] = {}
    for label, v in entries:
        vals = v if isinstance(v, list | tuple) else [v]
        if not vals:
            raise ValueError(f"{where}: label {label!r} lists no value")
        values[label] = sorted({_int_value(x, where, f"label {label!r} value") for x in vals})
        if 0 in values[label]:
            raise ValueError(f"{where}: label {label!r} uses value 0, which is the background")

    rco = meta.get("regions_class_order")
    if regions:
        if not isinstance(rco, list | tuple) or len(rco) != len(entries):
            raise ValueError(
                f"{where}: region-based labels need regions_class_order with one value per region "
                f"({len(entries)}: {[k for k, _ in entries]}), got {rco!r}"
            )
        rco = [_int_value(x, where, "regions_class_order value") for x in rco]
        known = {vals[0] for (_, v), vals in zip(entries, values.values()) if not isinstance(v, list | tuple)}
        known |= set(rco) | set(ignore)
        listed = [x for vals in values.values() for x in vals]
        known |= {x for x in listed if listed.count(x) > 1}
        for label, vals in values.items():
            unknown = [x for x in vals if x not in known]
            if unknown:
                raise ValueError(
                    f"{where}: region {label!r} names label value(s) {unknown} that nothing else declares (a label "
                    f"value must be an integer label, a regions_class_order value or shared by regions; known: "
                    f"{sorted(known)})"
                )
    else:
        seen: dict[int, str] = {}
        for label, vals in values.items():
            if vals[0] in seen:
                raise ValueError(f"{where}: labels {seen[vals[0]]!r} and {label!r} share the value {vals[0]}")
            seen[vals[0]] = label
        rco = None

    classes = tuple(_class_name(k) for k, _ in entries)
    if len(set(classes)) != len(classes):
        raise ValueError(f"{where}: label names {[k for k, _ in entries]} collide as class names {list(classes)}")
    source = {
        "labels": dict(labels),
        "regions_class_order": rco,
        "file_ending": ending,
        "label_values": {c: values[k] for c, (k, _) in zip(classes, entries)},
        "ignore_values": ignore,
        "channel_names": {str(k): str(v) for k, v in ch.items()},
    }
    return DatasetInfo(
        classes=classes,
        label_kind="overlapping" if regions else "exclusive",
        channels=channels,
        intensity=intensity_kind(channels[0]),
        format="nnunet",
        name=str(meta.get("name") or name),
        source=source,
    )


def _scan_images(folder: Path, ending: str, n_channels: int) -> dict[str, tuple[str, ...]]:
    """``{case: (channel paths)}`` of ``{case}_{XXXX}{ending}`` files.

    Raises:
        FileNotFoundError: a case misses a channel file (the expected path is named).
        ValueError: a channel index beyond ``channel_names``.
    """
    pattern = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$", re.IGNORECASE)
    found: dict[str, dict[int, Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        m = pattern.match(p.name)
        if m is None:
            if p.name.lower().endswith(ending.lower()):
                _warn(f"{p}: ignored, not named {{case}}_{{XXXX}}{ending}")
            continue
        found.setdefault(m["case"], {})[int(m["ch"])] = p
    out = {}
    for case, chans in sorted(found.items()):
        extra = sorted(k for k in chans if k >= n_channels)
        if extra:
            raise ValueError(
                f"{chans[extra[0]]}: channel {extra[0]:04d}, but dataset.json declares {n_channels} channel(s)"
            )
        for k in range(n_channels):
            if k not in chans:
                raise FileNotFoundError(
                    f"{folder / f'{case}_{k:04d}{ending}'} not found: case {case!r} misses channel {k} "
                    f"(dataset.json declares {n_channels} channel(s))"
                )
        out[case] = tuple(str(chans[k]) for k in range(n_channels))
    return out


class NnUNetReader:
    """Reader of the nnU-Net v2 raw format (module docstring). Takes no options."""

    name = "nnunet"

    def scan(self, root: str, split: str, options: dict[str, Any]) -> tuple[DatasetInfo, list[SourceVolume]]:
        """The description and the volumes of ``imagesTr`` (+ ``labelsTr``; ``split="train"``) or ``imagesTs``.

        Raises:
            FileNotFoundError: no dataset.json / images folder, a missing channel or label file.
            ValueError: a bad dataset.json, options given (classes, spacing and label kind come from the files).
        """
        if options:
            raise ValueError(
                f"the nnunet format takes its classes, label kind and spacing from dataset.json and the files; "
                f"drop the options {sorted(options)}"
            )
        root_p = Path(root)
        meta = read_dataset_json(root_p)
        info = dataset_info(meta, where=str(root_p / "dataset.json"), name=root_p.name)
        ending = info.source["file_ending"]
        folder = root_p / ("imagesTr" if split == "train" else "imagesTs")
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} not found (split {split!r} of an nnU-Net dataset)")
        cases = _scan_images(folder, ending, info.num_channels)
        sources = []
        for case, images in cases.items():
            label = None
            if split == "train":
                path = root_p / "labelsTr" / f"{case}{ending}"
                if not path.is_file():
                    raise FileNotFoundError(f"{path} not found: case {case!r} has images but no label")
                label = str(path)
            sources.append(SourceVolume(key=case, group=case, images=images, label=label))
        if split == "train":
            n = meta.get("numTraining")
            if n != len(sources):
                _warn(f"{root_p / 'dataset.json'}: numTraining is {n!r} but {folder} holds {len(sources)} case(s)")
        return info, sources

    def load(self, source: SourceVolume, info: DatasetInfo) -> LoadedVolume:
        """Read a case's channels and label; every file must lie on channel 0's grid.

        Raises:
            ValueError: a vector image, a channel or label on another grid (both grids are printed).
        """
        images = [_scalar(read_image(p), p) for p in source.images]
        ref = images[0]
        for p, im in zip(source.images[1:], images[1:]):
            if not im.same_grid(ref):
                raise ValueError(
                    f"{p}: its grid differs from channel 0's ({source.images[0]}): {im.describe()} vs {ref.describe()}"
                )
        label = None
        if source.label is not None:
            lab = _scalar(read_image(source.label), source.label)
            if not lab.same_grid(ref):
                raise ValueError(
                    f"{source.label}: the label's grid differs from its image {source.images[0]}: "
                    f"label {lab.describe()}; image {ref.describe()}"
                )
            label = lab.array
        stack = np.empty((len(images), *ref.array.shape), dtype=np.result_type(*[im.array for im in images]))
        for k, im in enumerate(images):
            stack[k] = im.array
        return LoadedVolume(
            images=stack,
            label=label,
            spacing=ref.spacing,
            origin=ref.origin,
            direction=ref.direction,
            slice_axis=default_slice_axis(ref.spacing),
        )


def _scalar(im: MedicalImage, path: str) -> MedicalImage:
    if im.array.ndim != 3:
        raise ValueError(f"{path}: a vector image of shape {im.array.shape}; nnU-Net stores one channel per file")
    return im


# ----------------------------------------------------------------------------------------------------- predictions


def _volume(info: DatasetInfo, key: str) -> VolumeInfo:
    if key not in info.volumes:
        raise ValueError(f"volume {key!r} is not in the dataset description (WORK/dataset.json)")
    v = info.volumes[key]
    if v.origin is None or v.direction is None:
        raise ValueError(f"volume {key!r} has no origin/direction in WORK/dataset.json; it was not read from volumes")
    return v


def _label_dtype(values: Sequence[int]) -> np.dtype:
    top = max([0, *values])
    return np.dtype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32)


def labels_from_masks(masks: np.ndarray, info: DatasetInfo, probs: np.ndarray | None = None) -> np.ndarray:
    """Binary masks ``(D, C, H, W)`` -> a label map ``(D, H, W)`` of nnU-Net label values (module docstring).

    Args:
        masks: bool (or 0/1) ``(D, C, H, W)``, the dataset's class order.
        info: the nnU-Net dataset description (``source``: ``label_values``, ``regions_class_order``).
        probs: optional float ``(D, C, H, W)``; exclusive classes: where masks overlap, the highest wins.

    Returns:
        uint8 ``(D, H, W)`` (uint16 when a label value exceeds 255).
    """
    masks = np.asarray(masks).astype(bool, copy=False)
    c = info.num_classes
    if masks.ndim != 4 or masks.shape[1] != c:
        raise ValueError(f"masks must be (D, {c}, H, W) for classes {list(info.classes)}, got {masks.shape}")
    lv = info.source["label_values"]
    all_values = sorted({int(v) for vals in lv.values() for v in vals})
    dt = _label_dtype(all_values + list(info.source.get("regions_class_order") or []))
    out = np.zeros((masks.shape[0], *masks.shape[2:]), dt)
    if info.label_kind == "exclusive":
        values = np.array([int(lv[name][0]) for name in info.classes], dtype=dt)
        if probs is None:
            for k in range(c):
                out[masks[:, k]] = values[k]
            return out
        probs = np.asarray(probs)
        if probs.shape != masks.shape:
            raise ValueError(f"probs must have the masks' shape {masks.shape}, got {probs.shape}")
        best = np.argmax(np.where(masks, probs, -np.inf), axis=1)
        return np.where(masks.any(axis=1), values[best], dt.type(0)).astype(dt)
    rco = info.source["regions_class_order"]
    for k in range(c):
        out[masks[:, k]] = int(rco[k])
    members: dict[int, list[int]] = {}
    for v in all_values:
        code = sum(1 << k for k, name in enumerate(info.classes) if v in lv[name])
        members.setdefault(code, []).append(v)
    packed = info.pack(masks)
    for code, vals in members.items():
        if len(vals) == 1 and code:
            out[packed == packed.dtype.type(code)] = vals[0]
    return out


def write_prediction(
    masks: np.ndarray,
    info: DatasetInfo,
    key: str,
    out_dir: str | os.PathLike,
    probs: np.ndarray | None = None,
) -> Path:
    """Write ``out_dir/{key}{file_ending}``: the label map of ``masks`` on the source image's exact grid.

    Args:
        masks: bool ``(D, C, H, W)`` in WORK axes (as WORK volumes and every prediction are).
        info: the dataset description (``read_dataset(work)`` of an nnU-Net WORK).
        key: the volume (nnU-Net case id).
        out_dir: the folder (created).
        probs: float ``(D, C, H, W)`` probabilities, to settle overlaps of exclusive classes.

    Returns:
        The written path (written atomically).

    Raises:
        ValueError: an unknown key, masks of another shape than the volume's.
    """
    v = _volume(info, key)
    masks = np.asarray(masks)
    want = (v.shape[0], info.num_classes, v.shape[1], v.shape[2])
    if masks.shape != want:
        raise ValueError(f"{key}: masks must be (D, C, H, W) = {want} (WORK axes), got {masks.shape}")
    label = labels_from_masks(masks, info, probs)
    _, spacing = source_geometry(v)
    array = np.transpose(label, tuple(int(i) for i in np.argsort(v.axes)))
    ending = info.source.get("file_ending", ".nii.gz")
    return write_image(Path(out_dir) / f"{key}{ending}", array, spacing, v.origin, v.direction)  # type: ignore[arg-type]


def read_prediction(path: str | os.PathLike, info: DatasetInfo, key: str) -> np.ndarray:
    """Read a label volume of volume ``key`` (a prediction, or a label file) as bool ``(D, C, H, W)`` in WORK axes.

    Raises:
        ValueError: its grid differs from the volume's (both are printed), undeclared label values.
        FileNotFoundError: no such file.
    """
    from data_prep.prepare_volumes import labels_to_mask  # noqa: PLC0415 - the engine imports the readers

    v = _volume(info, key)
    img = _scalar(read_image(path), str(path))
    shape, spacing = source_geometry(v)
    expected = MedicalImage(np.broadcast_to(np.uint8(0), shape), spacing, v.origin, v.direction)  # type: ignore[arg-type]
    if not img.same_grid(expected):
        raise ValueError(
            f"{path}: its grid differs from volume {key!r}'s: file {img.describe()}; volume {expected.describe()}"
        )
    packed = labels_to_mask(np.transpose(img.array, v.axes), info, where=str(path))
    return info.unpack(packed).astype(bool)
