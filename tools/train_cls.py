"""Train the slice classifier: ``tools/train.py`` under the name earlier scripts use (same arguments).

python tools/train_cls.py mmcfg/gating/cls_efficientnet-b0_1xb32-8k_uwmgi-256x256.py --work WORK --fold 0
"""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.argv[0] = str(Path(__file__).with_name("train.py"))
    runpy.run_path(sys.argv[0], run_name="__main__")
