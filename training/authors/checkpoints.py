"""Reading the authors' released checkpoints (``.pth``) safely and strictly.

:func:`load_authors_checkpoint` reads a file with ``torch.load(..., weights_only=True)`` (no
arbitrary object is ever unpickled), takes its state_dict (a plain ``{name: tensor}`` dict, or
one under ``"state_dict"``/``"network"``/``"model"``), strips DataParallel ``module.``
prefixes, recognises the layout from the keys (:func:`detect_arch`) and loads it into the
matching network of :mod:`training.authors` with no missing key, no unexpected key and no
shape mismatch. The one conversion the authors' own loaders make is made here too: a STCN-family
stage-0 checkpoint (``stcn_s0.pth``) whose ``value_encoder.conv1.weight`` takes 4 input channels
gets a zero 5th channel (the "other objects" mask), as STCN's ``eval_davis.py`` pads it.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from sdk.manifest import sha256_file

from .qdmn import QDMN
from .rde import RDE
from .stcn import STCN

# recognised in this order (RDE-VOS before STCN: its keys are STCN's + mem_compress)
ARCHS: dict[str, type[nn.Module]] = {"rde": RDE, "stcn": STCN, "qdmn": QDMN}
_CONTAINER_KEYS = ("state_dict", "network", "model")
_SHOWN = 5


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, is not a state_dict, or does not fit the layout."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """``path`` → {name: tensor} with ``module.`` prefixes stripped.

    Raises FileNotFoundError if there is no such file, :class:`CheckpointError` if it is not a
    torch checkpoint (truncated, corrupt, another kind of file), holds objects other than
    tensors and plain containers (refused by ``weights_only=True``), or holds no state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} cannot be loaded safely with weights_only=True (it is not a "
                              f"plain torch state_dict, or it is corrupt): {first}") from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, AttributeError,
            IndexError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated or not a .pth "
                              f"file): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if isinstance(obj, dict):
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), dict) and not isinstance(obj.get(key), torch.Tensor):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path} holds no state_dict ({{name: tensor}}, possibly under "
                              f"{'/'.join(_CONTAINER_KEYS)}); got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def detect_arch(keys) -> str:
    """Layout of a state_dict from its keys: ``"rde"`` (STCN's keys + ``mem_compress.``),
    ``"stcn"`` (``key_proj.key_proj.weight``, ``key_comp.weight``, ``value_encoder.fuser.``),
    ``"qdmn"`` (``mask_rgb_encoder.``, ``kv_m_f16.``, ``score.``, ``concat_conv.``). Raises
    :class:`CheckpointError` listing the layouts when none matches."""
    keys = set(keys)
    for name, cls in ARCHS.items():
        if cls.matches(keys):
            return name
    sample = ", ".join(sorted(keys)[:_SHOWN])
    raise CheckpointError(f"the checkpoint's keys fit none of the known layouts ({', '.join(ARCHS)}); "
                          f"its first keys: {sample}")


def strict_match(net: nn.Module, sd: dict, arch: str) -> None:
    """Raise :class:`CheckpointError` naming layout ``arch`` and the first offending keys unless
    ``sd`` has exactly ``net``'s keys with its shapes."""
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {list(sd[k].shape)} (expected {list(own[k].shape)})" for k in own
              if k in sd and sd[k].shape != own[k].shape]
    problems = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" … (+{len(items) - _SHOWN})" if len(items) > _SHOWN else ""
            problems.append(f"{len(items)} {what}: {', '.join(items[:_SHOWN])}{more}")
    if problems:
        raise CheckpointError(f"checkpoint does not match the {arch!r} layout: " + "; ".join(problems))


def load_authors_checkpoint(path: str | Path, arch: str | None = None, qam_activation: str | None = None) -> nn.Module:
    """Read the authors' checkpoint ``path`` into its network (eval mode, float32).

    arch: ``"stcn"``, ``"rde"``, ``"qdmn"`` or None = recognised from the keys.
    qam_activation: QDMN only, the last activation of its QAM (``"relu"`` as released, or
    ``"sigmoid"``); a checkpoint does not say which it was trained with. Raises
    FileNotFoundError, or :class:`CheckpointError` for an unreadable file, an unknown layout,
    or any missing/unexpected key or shape mismatch against the layout (the message names the
    layout and the first offending keys).
    """
    sd = read_state_dict(path)
    if arch is None:
        arch = detect_arch(sd)
    elif arch not in ARCHS:
        raise CheckpointError(f"unknown layout {arch!r}; known: {', '.join(ARCHS)}")
    if qam_activation is not None and arch != "qdmn":
        raise CheckpointError(f"qam_activation applies to QDMN checkpoints; this one is {arch!r}")
    net = ARCHS[arch](**({"qam_activation": qam_activation} if qam_activation else {}))
    sd = net.convert_state_dict(sd)
    strict_match(net, sd, arch)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    net.source = {"arch": arch, "checkpoint": Path(path).name, "sha256": sha256_file(path)}
    return net.eval()
