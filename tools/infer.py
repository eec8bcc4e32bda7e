"""Predictions with an ensemble spec (crop -> gate -> segmenters -> 3D -> fuse -> post), in the input's format.

    python tools/infer.py --data-root DATA --split test --spec ensembles/configs/first_place.yaml \\
        --out submission.csv [--batch-size 16] [--workers 4] [--save-probs DIR] [--overlays 8] [--device cuda]
    python tools/infer.py --work WORK_TEST --spec tuned.yaml --out OUT [--overwrite]

A Kaggle test tree (--data-root) or a Kaggle WORK gives submission.csv, written atomically at the end. A WORK of
another format (nnU-Net, DICOM, slices) gives one prediction per volume in OUT/, in that format, and
OUT/predictions.json. Streams one volume at a time. Only trusted checkpoints may be loaded. See
``inference/pipeline.py`` and ``inference/parts.py``.

Resumable, in parts: each case-day's result is written atomically to OUT.parts/ (--parts-dir) as soon as it is
predicted; a rerun after a kill predicts only the case-days without a part, and the final output, assembled from the
parts, is byte-identical to an uninterrupted run's (--overwrite starts over). Parts made with another spec, other
classes or another sample submission are refused.

    python tools/infer.py ... --num-parts 2 --part-id 0 &      # on one GPU or machine
    python tools/infer.py ... --num-parts 2 --part-id 1 &      # on another: sorted(case-days)[K::N]
    python tools/infer.py ... --merge                          # or: whichever part ends last writes the output
    torchrun --nproc_per_node 4 tools/infer.py ... --device cuda   # one part per GPU (cuda:LOCAL_RANK), rank 0 merges
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from common.engine import teardown_distributed
from ensembles.spec import load_spec
from inference.parts import PartPlan, dist_barrier, env_part, start_dist
from inference.pipeline import infer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-root", help="Kaggle tree: folder holding {split}/ and sample_submission.csv")
    src.add_argument("--work", help="a prepared WORK folder (python -m data_prep prepare) of any format")
    p.add_argument("--split", default="test", help="scan sub-folder of --data-root (default test)")
    p.add_argument("--spec", required=True, help="ensemble spec YAML (ensembles/configs/)")
    p.add_argument("--out", required=True, help="submission CSV (Kaggle) or folder of predictions (other formats)")
    p.add_argument("--sample-submission", default=None, help="row order (default DATA_ROOT/sample_submission.csv)")
    p.add_argument("--root", default=None, help="folder the spec's relative paths start from (default: cwd)")
    p.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default: the spec's)")
    p.add_argument("--workers", type=int, default=0, help="threads reading scans")
    p.add_argument("--save-probs", default=None, help="folder for the fused probabilities and gate decisions")
    p.add_argument("--overlays", type=int, default=0, help="number of overlay PNGs to write beside --out")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (a folder: predict all again)")
    p.add_argument("--skip-empty", action="store_true", help="skip case-day folders with no scans (else an error)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("resume and parts")
    g.add_argument("--parts-dir", default=None, help="folder of the per-case-day parts (default: OUT.parts)")
    g.add_argument("--num-parts", type=int, default=None, help="split the case-days across N processes (default 1)")
    g.add_argument("--part-id", type=int, default=None, help="this process's share K in [0, N): sorted(keys)[K::N]")
    g.add_argument("--merge", action="store_true", help="load no model: write the output from the parts (all needed)")
    return p


def main(argv: Sequence[str] | None = None, loaders: dict | None = None) -> int:
    """The command line (``loaders``: stand-in models, for tests)."""
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    progress = None
    if not a.no_progress:
        from tqdm import tqdm

        def progress(it):
            return tqdm(it, desc="case-days", unit="case-day")

    try:
        num_parts, part_id, local_rank = env_part(a.num_parts, a.part_id)
        if a.merge and (a.num_parts is not None or a.part_id is not None or local_rank is not None):
            raise ValueError("--merge writes the output of every part: give it without --num-parts / --part-id")
        device = a.device
        if local_rank is not None:  # under torchrun: one part per process, rank 0 merges after the others
            device = start_dist(a.device, local_rank)
        classes = None
        if a.work:
            from data_prep.work import read_dataset

            classes = read_dataset(a.work).classes
        spec = load_spec(a.spec, root=a.root, classes=classes)
        plan = PartPlan(num_parts, part_id, a.parts_dir, merge=a.merge, finish=local_rank is None)
        kw = dict(
            split=a.split,
            sample_submission=a.sample_submission,
            batch_size=a.batch_size,
            workers=a.workers,
            save_probs=a.save_probs,
            overlays=a.overlays,
            device=device,
            loaders=loaders,
            progress=progress,
            skip_empty=a.skip_empty,
            work=a.work,
        )
        sub = infer(a.data_root, spec, a.out, overwrite=a.overwrite, parts=plan, **kw)
        if local_rank is not None:
            dist_barrier()
            if part_id != 0:
                print(f"part {part_id} of {num_parts}: {len(sub.attrs.get('predicted', []))} case-day(s) predicted")
                return 0
            merge = PartPlan(1, 0, a.parts_dir, merge=True)
            sub = infer(a.data_root, spec, a.out, overwrite=a.overwrite, parts=merge, **kw)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        teardown_distributed()  # under torchrun: the process group ends before the interpreter does
    if "missing" in sub.attrs:
        print(
            f"part {part_id} of {num_parts}: {len(sub.attrs['predicted'])} case-day(s) predicted into "
            f"{sub.attrs['parts']}; {len(sub.attrs['missing'])} still missing (the other parts, then --merge)"
        )
    elif "skipped" in sub.columns:
        print(f"wrote {a.out}: {int((~sub['skipped']).sum())} prediction(s), {int(sub['skipped'].sum())} skipped")
    else:
        print(f"wrote {a.out}: {len(sub)} rows")
    return 0


if __name__ == "__main__":
    from common.engine import exit_process

    exit_process(main())  # under torchrun: no interpreter teardown after the run (see its docstring)
