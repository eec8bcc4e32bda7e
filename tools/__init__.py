"""Thin command lines (argparse and one call) and shell launchers; run as scripts, e.g. ``python tools/train.py``."""
