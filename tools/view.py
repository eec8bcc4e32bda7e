"""The local web viewer (``python -m viewer``): three planes, 3D, per-class toggles, scores, "Segment".

    python tools/view.py --work WORK [--pred DIR | submission.csv] [--truth DIR | labels.csv] [--port 8765]
    python tools/view.py --work WORK --pred PRED --export report/ [--cases KEY ...] [--runs work_dirs/]

See ``viewer/__main__.py`` for every flag.
"""

from __future__ import annotations

import sys

from viewer.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
