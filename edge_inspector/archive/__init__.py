"""NG archive: rejected frames and heatmap overlays on disk, with quota and age limits (store.py)."""
