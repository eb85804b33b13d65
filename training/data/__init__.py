"""Dataset readers at the authors' scale (issue 28): YouTube-VOS 2019, DAVIS 2017, static
image + mask folders, and weighted mixtures of them. Every reader returns
:class:`training.datasets.Sequence` objects whose ``frames``/``masks`` are :class:`LazyFrames`
(paths, decoded on access), so only an index is held in RAM and :class:`training.datasets.ClipDataset`
decodes the frames it samples in its DataLoader worker."""
from .errors import LayoutError
from .lazy import LazyFrames
from .davis2017 import read_davis2017
from .youtube import read_youtube_vos
from .static_folders import read_static_folder
from .mixture import MixtureDataset

__all__ = ["LayoutError", "LazyFrames", "read_davis2017", "read_youtube_vos", "read_static_folder",
           "MixtureDataset"]
