"""The local web viewer (three planes, 3D, per-class toggles, "Segment") and its static report."""
