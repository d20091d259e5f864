"""Build the FrameSource a station config asks for."""

from __future__ import annotations

from typing import Optional

from edge_inspector.acquisition.base import FrameSource, StateCallback
from edge_inspector.config.models import CameraConfig
from edge_inspector.errors import InputError


def create_source(camera_cfg: CameraConfig, on_state: Optional[StateCallback] = None) -> FrameSource:
    """Return an unopened source for ``camera.type``; call ``open()`` (or use ``with``) next.

    ``on_state(state, detail)`` is called on every camera state change ("open",
    "reconnecting", "closed", "ended", "error"), usually from the acquisition thread.
    pypylon is imported only for ``camera.type: pylon`` so other stations do not load it.
    Read ``source.triggered`` (not the config) to choose back-pressure vs drop: the folder
    source is triggered unless ``camera.trigger.mode: free_run`` is set explicitly.
    """
    if camera_cfg.type == "folder":
        from edge_inspector.acquisition.folder import FolderSource

        return FolderSource(camera_cfg, on_state)
    if camera_cfg.type == "opencv":
        from edge_inspector.acquisition.opencv import OpenCVSource

        return OpenCVSource(camera_cfg, on_state)
    if camera_cfg.type == "pylon":
        try:
            from edge_inspector.acquisition.pylon import PylonSource
        except ImportError as exc:
            raise InputError(f"camera.type=pylon: pypylon is not importable ({exc}); pip install pypylon") from None
        return PylonSource(camera_cfg, on_state)
    raise InputError(f"camera.type={camera_cfg.type}: unknown camera type (pylon, opencv or folder)")
