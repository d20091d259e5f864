"""Operator page: live view, NG gallery, feedback, drift (served by the health server)."""
