"""Exceptions raised by the vosedge sdk.

Every error names the problem (which file, which shape, which label) so that a user can act
on it without reading our code. Everything the sdk raises on purpose is a
:class:`VosEdgeError`; no exception from inside NumPy, OpenCV or ONNX Runtime reaches a
caller of ``Segmenter`` or of the readers in :mod:`sdk.io`.
"""


class VosEdgeError(Exception):
    """Base class of every error the sdk raises on purpose."""


class ManifestError(VosEdgeError):
    """An export folder cannot be used: missing/unknown manifest, incompatible manifest
    version, missing graph file, a graph whose sha256 differs from the manifest, or fields
    that disagree with the graphs or with themselves."""


class InputError(VosEdgeError, ValueError):
    """A frame or mask given by the caller is unusable: wrong shape or dtype, mask size ≠
    frame size, label above the model's object limit, empty first mask."""


class ParameterError(InputError):
    """A Segmenter argument or memory-policy parameter has the wrong type or lies outside
    its range (σ, β, θ, k, gates, top_k, resolution, threads); NaN is always refused."""


class VideoReadError(VosEdgeError, OSError):
    """A video file or frame folder cannot be read (missing, empty, undecodable)."""


class BadFrameError(VideoReadError):
    """One frame of a video or frame folder is truncated or corrupt. ``path`` is the file
    (the video, or the frame's image file), ``index`` the frame's position in the video (0 =
    first), ``name`` its frame name (file stem, or '00042' in a video)."""

    def __init__(self, message: str, path=None, index: int | None = None, name: str | None = None):
        super().__init__(message)
        self.path, self.index, self.name = path, index, name

    def __reduce__(self):   # picklable with its fields (crosses process boundaries in vos-bench)
        return (type(self), (str(self), self.path, self.index, self.name))


class OutputError(VosEdgeError, OSError):
    """An output folder cannot be used as asked: it holds files of another run (and
    overwriting was not asked for) or it is not a folder."""


class GraphRunError(VosEdgeError, RuntimeError):
    """ONNX Runtime failed while running a graph (e.g. it could not allocate memory for a
    large internal resolution). The message names the graph, the input shapes and what to
    change."""
