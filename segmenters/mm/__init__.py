"""mmseg 1.x modules of the 2.5D segmenters, registered in mmseg's registries (``default_scope='mmseg'``).

Named once in ``custom_imports`` of ``mmcfg/_base_/default_runtime.py``. The mmcv-lite compatibility shim
(``segmenters.mmcv_compat``) is imported first, before anything imports mmseg.
"""

import segmenters.mmcv_compat  # noqa: F401, I001  (must come before mmseg)
from segmenters.mm import data, metric, models

__all__ = ["data", "metric", "models"]
