"""Reading and validating an export folder (``docs/graph-contract.md``, manifest versions 1–2).

The manifest is the only contract between ``export/`` and ``sdk/``: graph files and their
sha256, strides, channel sizes, normalisation, default resolution, top-k, policy defaults and
(version 2) the ``inference`` semantics of the network's authors (padding, memory keys,
temporary memory, prior enhancement).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ManifestError

FORMAT = "vosedge-export"
MANIFEST_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
MANIFEST_FILE = "manifest.json"
GRAPH_NAMES = ("key_encoder", "value_encoder", "readout", "decoder")
# heads that only some memory policies need (QDMN/QPM: prior_enhance, qam; RDE: sam_key, sam_value)
OPTIONAL_GRAPHS = ("prior_enhance", "qam", "sam_key", "sam_value")
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"

# manifest["inference"] (version 2): field → (allowed values, the value a version-1 manifest means)
INFERENCE_FIELDS = {
    # where frames are zero-padded to a multiple of the stride: bottom/right (vosedge's own), or
    # split between both sides with the odd pixel at the bottom/right (STM/STCN ``pad_divide_by``)
    "padding": (("bottom_right", "centre"), "bottom_right"),
    # affinity inside the readout graph (recorded for the reader; the graph computes it)
    "affinity": (("l2", "dot"), "l2"),
    # memory keys: one per frame from the key encoder (STCN), or one per object from the value
    # encoder (STM/QDMN: its graph outputs "key" [N,C_k,h,w] and the readout takes [N,C_k,M])
    "memory_keys": (("shared", "per_object"), "shared"),
    # whether the previous frame is read as a temporary memory when it was not written (QDMN)
    "temporary_memory": ((False, True), False),
    # prior enhancement: only for the policies that require it (qdmn, qpm), or on every frame
    # whatever the policy (a network that was built with it, QDMN)
    "prior_enhance": (("policy", "always"), "policy"),
    # what the QAM head's last activation is (scores in [0,1], or ≥ 0 unbounded)
    "qam_activation": (("sigmoid", "relu"), "sigmoid"),
}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """A validated export folder.

    ``graphs`` maps each graph name of :data:`GRAPH_NAMES`, and of :data:`OPTIONAL_GRAPHS`
    the manifest lists, to its absolute file path;
    ``mean``/``std`` normalise an RGB image as ``(rgb_uint8 / 255 − mean) / std``;
    ``resolution`` is the default internal short side in px (None = native size);
    ``stride`` is the factor H and W must be multiples of; ``raw`` is the parsed JSON.
    """

    root: Path
    config: str
    method: str
    opset: int
    stride: int
    key_channels: int
    value_channels: int
    skip_channels: dict
    max_objects: int
    mean: tuple
    std: tuple
    resolution: int | None
    top_k: int
    policy_defaults: dict
    graphs: dict
    parity: dict
    raw: dict
    inference: dict


def load_manifest(folder: str | Path, verify_sha256: bool = True) -> Manifest:
    """Read ``folder/manifest.json`` and check it against the files next to it.

    Raises :class:`~sdk.errors.ManifestError` if the folder or manifest is missing or not
    JSON, ``format`` is not ``"vosedge-export"``, ``manifest_version`` is not 1 or 2, a required
    field or graph entry is missing, a listed graph file is missing, or (``verify_sha256``) a graph's
    sha256 differs from the manifest (tampered or truncated file).
    """
    root = Path(folder).expanduser().resolve()
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_FILE} in {root}: not a vosedge export folder "
                            "(produce one with `vos-export --checkpoint CKPT --method every_k --out DIR`)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ManifestError(f"{path}: format is {got!r}, expected {FORMAT!r}")
    version = raw.get("manifest_version")
    if version not in SUPPORTED_VERSIONS:
        raise ManifestError(f"{path}: manifest_version {version!r} is not supported by this sdk (supports "
                            f"{', '.join(map(str, SUPPORTED_VERSIONS))}); re-export with a matching vosedge")
    try:
        graphs = {}
        for name in GRAPH_NAMES + tuple(g for g in OPTIONAL_GRAPHS if g in raw["graphs"]):
            entry = raw["graphs"][name]
            file = root / entry["file"]
            if not file.is_file():
                raise ManifestError(f"{path}: graph {name!r} file {file} is missing")
            if verify_sha256 and sha256_file(file) != entry["sha256"]:
                raise ManifestError(f"{path}: graph {name!r} file {file} does not match its sha256 "
                                    "in the manifest (tampered or truncated); re-export the model")
            graphs[name] = file
        norm = raw["normalisation"]
        manifest = Manifest(
            root=root, config=str(raw["config"]), method=str(raw["method"]), opset=int(raw["opset"]),
            stride=int(raw["stride"]), key_channels=int(raw["key_channels"]),
            value_channels=int(raw["value_channels"]), skip_channels=dict(raw["skip_channels"]),
            max_objects=int(raw["max_objects"]),
            mean=tuple(float(x) for x in norm["mean"]), std=tuple(float(x) for x in norm["std"]),
            resolution=None if raw["resolution"] is None else int(raw["resolution"]),
            top_k=int(raw["top_k"]), policy_defaults=dict(raw["policy_defaults"]), graphs=graphs,
            parity=dict(raw.get("parity") or {}), raw=raw,
            inference=_inference(path, raw.get("inference") if version >= 2 else {}))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ManifestError(f"{path}: missing or malformed field ({exc!r})") from exc
    if not 1 <= manifest.max_objects <= 255:
        raise ManifestError(f"{path}: max_objects {manifest.max_objects} outside 1..255 (uint8 label maps)")
    return manifest


def _inference(path: Path, given) -> dict:
    """manifest["inference"] with every :data:`INFERENCE_FIELDS` entry (defaults filled in);
    raises ManifestError for an unknown field or value."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ManifestError(f"{path}: 'inference' must be an object, got {type(given).__name__}")
    unknown = sorted(set(given) - set(INFERENCE_FIELDS) - {"resolution", "notes"})
    if unknown:
        raise ManifestError(f"{path}: unknown inference field(s) {unknown}; this sdk knows {sorted(INFERENCE_FIELDS)}")
    out = {}
    for name, (allowed, default) in INFERENCE_FIELDS.items():
        value = given.get(name, default)
        if value not in allowed or type(value) is not type(default):
            raise ManifestError(f"{path}: inference.{name} is {value!r}; expected one of {list(allowed)}")
        out[name] = value
    return out


def resolve_model(model: str | Path | None) -> Manifest:
    """``None`` → the bundled default export ``sdk/models/default``; else an export folder."""
    if model is None:
        if not (DEFAULT_MODEL_DIR / MANIFEST_FILE).is_file():
            raise ManifestError(
                f"no bundled default model at {DEFAULT_MODEL_DIR}; export one with "
                f"`vos-export --checkpoint CKPT --method every_k --out {DEFAULT_MODEL_DIR}` "
                "or pass Segmenter(model=EXPORT_DIR)")
        return load_manifest(DEFAULT_MODEL_DIR)
    return load_manifest(model)
