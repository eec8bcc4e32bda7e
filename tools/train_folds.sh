#!/usr/bin/env bash
# One training run per fold:  tools/train_folds.sh CONFIG GPUS [FOLDS] [--overwrite] [tools/train.py args]
#   FOLDS: comma-separated (default 0,1,2,3,4). GPUS=1 runs tools/train.py, more runs tools/dist_train.sh.
# A fold whose work dir has done.json is skipped (unless --overwrite); an interrupted fold (checkpoints but no
# done.json) is resumed; the script stops at the first failing fold. Work dirs: work_dirs/{config}/fold_{k},
# or WORK_DIRS/{config}/fold_{k} when WORK_DIRS is set.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG GPUS [FOLDS] [--overwrite] [train.py args...]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
FOLDS="0,1,2,3,4"
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+(,[0-9]+)*$ ]]; then
    FOLDS=$1
    shift
fi
OVERWRITE=0
ARGS=()
for a in "$@"; do
    if [ "$a" = "--overwrite" ]; then OVERWRITE=1; else ARGS+=("$a"); fi
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-python}
NAME="$(basename "$CONFIG" .py)"
BASE="${WORK_DIRS:-$ROOT/work_dirs}/$NAME"

IFS=',' read -ra FOLD_LIST <<< "$FOLDS"
for K in "${FOLD_LIST[@]}"; do
    WD="$BASE/fold_$K"
    EXTRA=()
    if [ -f "$WD/done.json" ] && [ "$OVERWRITE" = 0 ]; then
        echo "fold $K: finished ($WD/done.json), skipped (--overwrite to train it again)"
        continue
    elif [ "$OVERWRITE" = 1 ]; then
        EXTRA+=(--overwrite)
    elif [ -f "$WD/last_checkpoint" ] || compgen -G "$WD/iter_*.pth" > /dev/null; then
        echo "fold $K: interrupted run found, resuming"
        EXTRA+=(--resume)
    fi
    echo "fold $K: training -> $WD"
    if [ "$GPUS" -gt 1 ]; then
        PYTHON="$PYTHON" "$ROOT/tools/dist_train.sh" "$CONFIG" "$GPUS" --fold "$K" --work-dir "$WD" \
            ${EXTRA[@]+"${EXTRA[@]}"} ${ARGS[@]+"${ARGS[@]}"} || { echo "fold $K failed; stopping" >&2; exit 1; }
    else
        "$PYTHON" "$ROOT/tools/train.py" "$CONFIG" --fold "$K" \
            --work-dir "$WD" ${EXTRA[@]+"${EXTRA[@]}"} ${ARGS[@]+"${ARGS[@]}"} \
            || { echo "fold $K failed; stopping" >&2; exit 1; }
    fi
done
echo "all folds done: $FOLDS"
