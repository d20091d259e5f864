"""Acquisition stage: camera sources behind one FrameSource interface (see base.py)."""

from edge_inspector.acquisition.base import CameraError, Frame, FrameSource, StateCallback
from edge_inspector.acquisition.factory import create_source

__all__ = ["CameraError", "Frame", "FrameSource", "StateCallback", "create_source"]
