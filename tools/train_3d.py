"""Train a 3D segmenter: ``tools/train.py`` under the name earlier scripts use (same arguments).

python tools/train_3d.py mmcfg/monai3d/segresnet_1xb2-20k_uwmgi-224x224x80.py --work WORK --fold all --amp
"""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.argv[0] = str(Path(__file__).with_name("train.py"))
    runpy.run_path(sys.argv[0], run_name="__main__")
