"""Exceptions raised by the vosedge sdk.

Every error names the problem (which file, which shape, which label) so that a user can act
on it without reading our code.
"""


class VosEdgeError(Exception):
    """Base class of every error the sdk raises on purpose."""


class ManifestError(VosEdgeError):
    """An export folder cannot be used: missing/unknown manifest, incompatible manifest
    version, missing graph file, or a graph whose sha256 differs from the manifest."""


class InputError(VosEdgeError, ValueError):
    """A frame or mask given by the caller is unusable: wrong shape or dtype, mask size ≠
    frame size, label above the model's object limit, empty first mask."""


class VideoReadError(VosEdgeError, OSError):
    """A video file or frame folder cannot be read (missing, empty, undecodable)."""
