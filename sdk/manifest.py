"""Reading and validating an export folder (``docs/graph-contract.md``, manifest versions 1–2).

The manifest is the only contract between ``export/`` and ``sdk/``: graph files and their
sha256, strides, channel sizes, normalisation, default resolution, top-k, policy defaults and
(version 2) the ``inference`` semantics of the network's authors (padding, memory keys,
temporary memory, prior enhancement); optionally the ``precision`` of the graphs (float16 /
int8 exports of ``vos-export --precision``) and a ``proposals`` graph (DMN-AOA's object
proposals, :mod:`sdk.proposal_formats`).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from .errors import ManifestError
from .proposal_formats import parse_entry

FORMAT = "vosedge-export"
MANIFEST_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
MANIFEST_FILE = "manifest.json"
GRAPH_NAMES = ("key_encoder", "value_encoder", "readout", "decoder")
# heads that only some memory policies need (QDMN/QPM: prior_enhance, qam; RDE: sam_key, sam_value)
OPTIONAL_GRAPHS = ("prior_enhance", "qam", "sam_key", "sam_value",
                   # DMN-AOA (method dmn_aoa, export/dmn_export.py, docs/dmn-aoa.md)
                   "dmn_memory", "dmn_template", "aoa_match", "refine")
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"
SKIP_LEVELS = ("f16", "f8", "f4")
# the largest stride accepted: Graphs probes it with a 2·stride square image, and a frame's
# internal size is at least one stride (vosedge's and the authors' networks: 16)
MAX_STRIDE = 64
REQUIRED_FIELDS = ("config", "method", "opset", "stride", "key_channels", "value_channels", "skip_channels",
                   "max_objects", "normalisation", "resolution", "top_k", "policy_defaults", "graphs")

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

# manifest["precision"] (optional; absent = every graph float32): precision.dtype and each
# precision.graphs value must be one of these. Every graph keeps float32 inputs and outputs
# whatever its precision, so the sdk runs them all alike.
PRECISION_DTYPES = ("float32", "float16", "int8")


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
    ``stride`` is the factor H and W must be multiples of; ``raw`` is the parsed JSON;
    ``precision`` is the manifest's ``precision`` object with ``dtype`` (one of
    :data:`PRECISION_DTYPES`) and ``graphs`` ({graph name: dtype} for every graph of
    ``graphs``; float32 where the manifest names none) — ``{"dtype": "float32", "graphs":
    {…: "float32"}}`` for a manifest without one; ``proposals`` is the manifest's ``proposals``
    object validated by :func:`sdk.proposal_formats.parse_entry` (with ``path``, the graph's
    absolute path), or None when the export has none.
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
    precision: dict = field(default_factory=lambda: {"dtype": "float32", "graphs": {}})
    proposals: dict | None = None


def load_manifest(folder: str | Path, verify_sha256: bool = True) -> Manifest:
    """Read ``folder/manifest.json`` and check it against the files next to it and itself.

    Raises :class:`~sdk.errors.ManifestError` (naming the field, its value and what was
    expected) if the folder or manifest is missing or not JSON, ``format`` is not
    ``"vosedge-export"``, ``manifest_version`` is not 1 or 2, a required field or graph entry is
    missing, a listed graph file is missing, (``verify_sha256``) a graph's sha256 differs from the
    manifest (tampered or truncated file), or a field has the wrong type or range: ``stride`` an
    int in 1..:data:`MAX_STRIDE`; ``key_channels``, ``value_channels``, ``skip_channels``
    ``f16``/``f8``/``f4``, ``opset``, ``top_k`` positive ints; ``max_objects`` an int in 1..255;
    ``normalisation`` ``mean``/``std`` three finite numbers each, ``std`` > 0 (0 divides by
    zero: NaN images and empty masks); ``resolution`` None or a positive int;
    ``policy_defaults`` an object of objects; ``config``/``method`` strings; ``precision``
    (optional) an object whose ``dtype`` and ``graphs`` values are in :data:`PRECISION_DTYPES`
    (an unknown precision, e.g. from a newer vosedge, is refused naming it and the known ones)
    and whose ``graphs`` keys are graphs of the manifest; ``proposals`` (optional) as
    :func:`sdk.proposal_formats.parse_entry` checks it (file, sha256, format, preprocess,
    post-processing, defaults). The fields the
    graphs also define (channels, stride) are checked against them when
    :class:`sdk.runtime.Graphs` opens the graphs.
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
    missing = [name for name in REQUIRED_FIELDS if name not in raw]
    if missing:
        raise ManifestError(f"{path}: missing field(s) {', '.join(map(repr, missing))}; re-export the model")
    fields = _Fields(path, raw)
    graphs = {}
    entries = fields.get("graphs", dict, "an object {graph name: {file, sha256}}")
    for name in GRAPH_NAMES + tuple(g for g in OPTIONAL_GRAPHS if g in entries):
        entry = entries.get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) \
                or not isinstance(entry.get("sha256"), str):
            raise ManifestError(f"{path}: graphs.{name} is {entry!r}, expected an object with 'file' and "
                                "'sha256' strings; re-export the model")
        file = root / entry["file"]
        if not file.is_file():
            raise ManifestError(f"{path}: graph {name!r} file {file} is missing")
        if verify_sha256 and sha256_file(file) != entry["sha256"]:
            raise ManifestError(f"{path}: graph {name!r} file {file} does not match its sha256 "
                                "in the manifest (tampered or truncated); re-export the model")
        graphs[name] = file
    norm = fields.get("normalisation", dict, "an object {mean: [3 numbers], std: [3 numbers]}")
    mean = fields.triple(norm, "mean", positive=False)
    std = fields.triple(norm, "std", positive=True)
    resolution = raw["resolution"]
    if resolution is not None:
        resolution = fields.positive_int("resolution", "None (native size) or a positive int short side in px")
    skips = fields.get("skip_channels", dict, "an object {f16, f8, f4: channels}")
    for level in SKIP_LEVELS:
        fields.positive_int(f"skip_channels.{level}", value=skips.get(level))
    defaults = fields.get("policy_defaults", dict, "an object {policy: {parameter: value}}")
    bad = {k: v for k, v in defaults.items() if not isinstance(v, dict)}
    if bad:
        name, value = next(iter(bad.items()))
        raise ManifestError(f"{path}: policy_defaults.{name} is {value!r}, expected an object "
                            "{parameter: value}; re-export the model")
    parity = raw.get("parity") or {}
    if not isinstance(parity, dict):
        raise ManifestError(f"{path}: parity is {parity!r}, expected an object; re-export the model")
    max_objects = fields.positive_int("max_objects", "an int in 1..255 (uint8 label maps)")
    if max_objects > 255:
        raise ManifestError(f"{path}: max_objects {max_objects} outside 1..255 (uint8 label maps)")
    stride = fields.positive_int("stride", f"an int in 1..{MAX_STRIDE} (H and W of the graphs' inputs are "
                                 "multiples of it; vosedge's and the authors' exports use 16)")
    if stride > MAX_STRIDE:
        raise ManifestError(f"{path}: stride is {stride}, expected an int in 1..{MAX_STRIDE}; re-export the model")
    return Manifest(
        root=root, config=fields.get("config", str, "a string"), method=fields.get("method", str, "a string"),
        opset=fields.positive_int("opset"), stride=stride, key_channels=fields.positive_int("key_channels"),
        value_channels=fields.positive_int("value_channels"), skip_channels=dict(skips),
        max_objects=max_objects, mean=mean, std=std, resolution=resolution,
        top_k=fields.positive_int("top_k", "an int ≥ 1"), policy_defaults={k: dict(v) for k, v in defaults.items()},
        graphs=graphs, parity=dict(parity), raw=raw,
        inference=_inference(path, raw.get("inference") if version >= 2 else {}),
        precision=_precision(path, raw.get("precision"), graphs),
        proposals=None if raw.get("proposals") is None else parse_entry(path, raw["proposals"], root, verify_sha256))


class _Fields:
    """Type and range checks of manifest fields; each raises ManifestError naming the field,
    its value and what it should be."""

    def __init__(self, path: Path, raw: dict):
        self.path, self.raw = path, raw

    def fail(self, field: str, value, expected: str) -> NoReturn:
        raise ManifestError(f"{self.path}: {field} is {value!r}, expected {expected}; re-export the model")

    def get(self, field: str, kind: type, expected: str):
        value = self.raw.get(field)
        if not isinstance(value, kind):
            self.fail(field, value, expected)
        return value

    def positive_int(self, field: str, expected: str = "a positive int", value=None) -> int:
        if value is None and "." not in field:
            value = self.raw.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(field, value, expected)
        return value

    def triple(self, norm: dict, name: str, positive: bool) -> tuple[float, float, float]:
        """normalisation[name]: three finite numbers (> 0 if ``positive``) → a float tuple."""
        value = norm.get(name)
        expected = f"3 finite numbers{' > 0' if positive else ''} (R, G, B of image = (rgb/255 − mean) / std)"
        if not isinstance(value, list) or len(value) != 3 \
                or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in value) \
                or not all(math.isfinite(x) and (x > 0 or not positive) for x in value):
            self.fail(f"normalisation.{name}", value, expected)
        return tuple(float(x) for x in value)


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


def _precision(path: Path, given, graphs: dict) -> dict:
    """manifest["precision"] with ``dtype`` and ``graphs`` filled in for every graph (float32
    when absent); raises ManifestError for a precision or graph dtype outside
    :data:`PRECISION_DTYPES`, or a graph name the manifest does not list."""
    if given is None:
        return {"dtype": "float32", "graphs": dict.fromkeys(graphs, "float32")}
    known = ", ".join(PRECISION_DTYPES)
    if not isinstance(given, dict):
        raise ManifestError(f"{path}: precision is {given!r}, expected an object {{dtype, graphs}}; re-export the model")
    dtype = given.get("dtype")
    if dtype not in PRECISION_DTYPES:
        raise ManifestError(f"{path}: precision.dtype is {dtype!r}, which this sdk does not know (known: {known}); "
                            "use a vosedge that supports it, or the float32 export")
    per_graph = given.get("graphs", {})
    if not isinstance(per_graph, dict):
        raise ManifestError(f"{path}: precision.graphs is {per_graph!r}, expected an object {{graph: dtype}}")
    for name, value in per_graph.items():
        if name not in graphs:
            raise ManifestError(f"{path}: precision.graphs names graph {name!r}, which the manifest does not list "
                                f"(graphs: {', '.join(graphs)}); re-export the model")
        if value not in PRECISION_DTYPES:
            raise ManifestError(f"{path}: precision.graphs.{name} is {value!r}, which this sdk does not know "
                                f"(known: {known}); use a vosedge that supports it, or the float32 export")
    return {**given, "dtype": dtype, "graphs": {name: per_graph.get(name, "float32") for name in graphs}}


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
