"""The one training engine of the project (mmengine Runner, hooks, config loading, fold-by-fold training)."""
