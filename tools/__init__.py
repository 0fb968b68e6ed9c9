"""One-off utilities (the classifier trainer, the explorer screenshot) and `report`, the helpers experiments and benchmarks share."""
