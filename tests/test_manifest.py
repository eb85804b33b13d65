"""Manifest validation: the sdk refuses export folders that break the graph contract."""
import json
import shutil

import pytest

import sdk.manifest
from sdk import Segmenter
from sdk.errors import ManifestError
from sdk.manifest import GRAPH_NAMES, load_manifest, resolve_model, sha256_file


@pytest.fixture
def export_copy(tiny_export, tmp_path):
    """A private copy of the tiny export that a test may damage."""
    return shutil.copytree(tiny_export, tmp_path / "copy")


def edit_manifest(folder, **changes):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_fields(tiny_export):
    m = load_manifest(tiny_export)
    assert (m.config, m.method, m.opset, m.stride) == ("lite", "every_k", 17, 16)
    assert (m.key_channels, m.value_channels, m.max_objects, m.top_k, m.resolution) == (16, 32, 8, 20, 64)
    assert m.skip_channels == {"f16": 112, "f8": 40, "f4": 24}
    assert set(m.graphs) == set(GRAPH_NAMES) and all(p.is_file() for p in m.graphs.values())
    assert m.policy_defaults == {"every_k": {"k": 5}, "first_latest": {}, "lfu": {"k": 5, "capacity_frames": 2},
                                 "qdmn": {"interval": 5, "sigma": 0.8, "beta": 20},
                                 "qpm": {"interval": 5, "sigma_m": 0.7, "sigma_en": 0.65},
                                 "rde": {"theta": 3, "top_k": 40}}
    assert len(m.mean) == len(m.std) == 3


def test_tampered_graph_is_refused(export_copy):
    with open(export_copy / "decoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="decoder.*sha256"):
        load_manifest(export_copy)


def test_truncated_graph_is_refused(export_copy):
    path = export_copy / "key_encoder.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ManifestError, match="key_encoder.*sha256"):
        Segmenter(export_copy, providers="cpu")


def test_missing_graph_is_refused(export_copy):
    (export_copy / "readout.onnx").unlink()
    with pytest.raises(ManifestError, match="readout.*missing"):
        load_manifest(export_copy)


@pytest.mark.parametrize("changes, message", [
    ({"manifest_version": 3}, "manifest_version 3 is not supported"),
    ({"inference": {"padding": "left"}}, r"inference.padding is 'left'"),
    ({"inference": {"memory_keys": "shared", "pixels": 3}}, r"unknown inference field\(s\) \['pixels'\]"),
    ({"inference": {"temporary_memory": "yes"}}, "inference.temporary_memory is 'yes'"),
    ({"format": "something-else"}, "format is 'something-else'"),
    ({"stride": None}, "malformed"),
])
def test_incompatible_manifest_is_refused(export_copy, changes, message):
    edit_manifest(export_copy, **changes)
    with pytest.raises(ManifestError, match=message):
        load_manifest(export_copy)


def test_version_1_manifest_keeps_its_semantics(export_copy):
    """An export written before manifest version 2 (the bundled model's) loads with the
    semantics it was made for: bottom/right padding, shared keys, no temporary memory."""
    edit_manifest(export_copy, manifest_version=1, inference={"padding": "centre"})   # ignored in v1
    m = load_manifest(export_copy)
    assert m.inference == {"padding": "bottom_right", "affinity": "l2", "memory_keys": "shared",
                           "temporary_memory": False, "prior_enhance": "policy", "qam_activation": "sigmoid"}
    edit_manifest(export_copy, manifest_version=2, inference={"padding": "centre", "temporary_memory": True})
    m = load_manifest(export_copy)
    assert m.inference["padding"] == "centre" and m.inference["temporary_memory"] is True
    assert m.inference["memory_keys"] == "shared"


def test_missing_field_and_bad_json(export_copy):
    data = json.loads((export_copy / "manifest.json").read_text())
    del data["normalisation"]
    (export_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="normalisation"):
        load_manifest(export_copy)
    (export_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="JSON"):
        load_manifest(export_copy)


def test_no_manifest_and_no_bundled_model(tmp_path, monkeypatch):
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(tmp_path)
    monkeypatch.setattr(sdk.manifest, "DEFAULT_MODEL_DIR", tmp_path / "models" / "default")
    with pytest.raises(ManifestError, match="vos-export --checkpoint"):
        resolve_model(None)
    with pytest.raises(ManifestError, match="no bundled default model"):
        Segmenter()


def test_unloadable_graph_is_refused(export_copy):
    (export_copy / "decoder.onnx").write_bytes(b"not an onnx graph")
    data = json.loads((export_copy / "manifest.json").read_text())
    data["graphs"]["decoder"]["sha256"] = sha256_file(export_copy / "decoder.onnx")
    (export_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="cannot load graph 'decoder'"):
        Segmenter(export_copy, providers="cpu")


def test_graph_signatures_are_recorded_and_checked(export_copy):
    raw = json.loads((export_copy / "manifest.json").read_text())
    assert raw["graphs"]["key_encoder"]["inputs"] == {"image": [1, 3, "H", "W"]}
    assert list(raw["graphs"]["readout"]["inputs"]) == ["query_key", "memory_keys", "memory_values", "valid", "top_k"]
    assert raw["graphs"]["decoder"]["outputs"]["logits"][0] == "N"
    # a decoder graph swapped in from an export whose names differ: refused by name
    raw["graphs"]["decoder"]["outputs"] = {"mask_logits": ["N", 1, "H", "W"]}
    (export_copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="graph 'decoder' has outputs \\['logits'\\].*mask_logits"):
        Segmenter(export_copy, providers="cpu")
