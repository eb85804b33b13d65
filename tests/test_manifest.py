"""Manifest validation: the sdk refuses export folders that break the graph contract."""
import json
import math
import shutil
import time

import numpy as np
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
    ({"stride": None}, "stride is None, expected an int in 1..64"),
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
    with pytest.raises(ManifestError, match="missing field.*'normalisation'"):
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


def edit_raw(folder, edit):
    """Apply ``edit(raw manifest dict)`` to ``folder``'s manifest (graph files untouched)."""
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))   # NaN is written as NaN, which json (and the sdk) reads back


def _set(*keys_value):
    """edit: data[k1][k2]… = value."""
    *keys, value = keys_value

    def edit(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("normalisation", "std", [0.5, 0.0, 0.5]),
     r"normalisation.std is \[0.5, 0.0, 0.5\], expected 3 finite numbers > 0"),
    (_set("normalisation", "std", [0.5, -0.5, 0.5]), r"normalisation.std is .*> 0"),
    (_set("normalisation", "std", [0.5, math.nan, 0.5]), r"normalisation.std is \[0.5, nan, 0.5\]"),
    (_set("normalisation", "mean", [0.5, math.inf, 0.5]), r"normalisation.mean is \[0.5, inf, 0.5\], expected 3"),
    (_set("normalisation", "mean", [0.5, 0.5]), r"normalisation.mean is \[0.5, 0.5\]"),
    (_set("normalisation", "mean", ["0.5", 0.5, 0.5]), r"normalisation.mean is \['0.5', 0.5, 0.5\]"),
    (_set("normalisation", "std", True), r"normalisation.std is True"),
    (_set("normalisation", [0.5]), r"normalisation is \[0.5\], expected an object"),
    (_set("stride", 0), r"stride is 0, expected an int in 1..64"),
    (_set("stride", 16.5), r"stride is 16.5, expected an int"),
    (_set("stride", "16"), r"stride is '16', expected an int"),
    (_set("stride", True), r"stride is True, expected an int"),
    (_set("stride", 128), r"stride is 128, expected an int in 1..64"),
    (_set("key_channels", -16), r"key_channels is -16, expected a positive int"),
    (_set("value_channels", 32.0), r"value_channels is 32.0, expected a positive int"),
    (_set("skip_channels", {"f16": 112, "f8": 40}), r"skip_channels.f4 is None, expected a positive int"),
    (_set("skip_channels", "f16"), r"skip_channels is 'f16', expected an object"),
    (_set("max_objects", 0), r"max_objects is 0, expected an int in 1..255"),
    (_set("max_objects", 300), r"max_objects 300 outside 1..255"),
    (_set("resolution", 0), r"resolution is 0, expected None \(native size\) or a positive int"),
    (_set("resolution", "480"), r"resolution is '480'"),
    (_set("top_k", 0), r"top_k is 0, expected an int ≥ 1"),
    (_set("opset", "17"), r"opset is '17'"),
    (_set("policy_defaults", ["every_k"]), r"policy_defaults is \['every_k'\], expected an object"),
    (_set("policy_defaults", "every_k", 5), r"policy_defaults.every_k is 5, expected an object"),
    (_set("method", 5), r"method is 5, expected a string"),
    (_set("config", None), r"config is None, expected a string"),
    (_set("graphs", "decoder", "file", 3), r"graphs.decoder is .*expected an object with 'file' and 'sha256'"),
    (lambda data: data.pop("top_k"), r"missing field\(s\) 'top_k'"),
])
def test_manifest_fields_are_type_and_range_checked(export_copy, edit, message):
    """A field of the wrong type or range is refused when the manifest is read, naming the field
    and its value (today's alternatives: numpy warnings and empty masks for std = 0, a silently
    truncated stride 16.5)."""
    edit_raw(export_copy, edit)
    with pytest.raises(ManifestError, match=message) as info:
        load_manifest(export_copy)
    assert "re-export the model" in str(info.value) or "outside 1..255" in str(info.value)


@pytest.mark.parametrize("edit, message", [
    (_set("key_channels", 32), (r"key_channels is 32 but graph 'key_encoder' output 'key' has 16 channels "
                               r"\[1, 16, 'h', 'w'\]: manifest and graphs disagree; re-export the model")),
    (_set("value_channels", 64), r"value_channels is 64 but graph 'value_encoder' output 'value' has 32 channels"),
    (_set("skip_channels", "f16", 100), r"skip_channels.f16 is 100 but graph 'key_encoder' output 'f16' has 112"),
    (_set("skip_channels", "f8", 20), r"skip_channels.f8 is 20 but graph 'key_encoder' output 'f8' has 40"),
    (_set("skip_channels", "f4", 12), r"skip_channels.f4 is 12 but graph 'key_encoder' output 'f4' has 24"),
    (_set("stride", 8), (r"stride is 8 but graph 'key_encoder' turns a 8x72 image into f16 of 1x5 "
                         r"\(expected 1x9; the graph has stride 16\).*re-export the model")),
    (_set("stride", 32), (r"stride is 32 but graph 'key_encoder' turns a 32x1056 image into f16 of 2x66 "
                          r"\(expected 1x33; the graph has stride 16\)")),
    # a square of 2·15 px gives f16 2x2 at stride 16 too (rounded up): the probe's width tells them apart
    (_set("stride", 15), r"stride is 15 but graph 'key_encoder' turns a 15x240 image into f16 of 1x15"),
    (_set("stride", 17), r"stride is 17 but graph 'key_encoder' turns a 17x306 image into f16 of 2x20"),
    (_set("stride", 1), r"stride is 1 but graph 'key_encoder' (turns a 1x2 image|cannot run on a 1x2 image)"),
])
def test_manifest_that_disagrees_with_its_graphs_is_refused(export_copy, edit, message):
    """key_channels/stride that disagree with the graphs used to end in a numpy broadcast error in
    sdk/bank.py on the second frame; now the Segmenter refuses the export when it opens the graphs."""
    edit_raw(export_copy, edit)
    load_manifest(export_copy)                       # the fields themselves are well-formed
    with pytest.raises(ManifestError, match=message):
        Segmenter(export_copy, providers="cpu")


def test_head_graphs_are_checked_too(heads_export, tmp_path):
    """Every graph that carries a key or value is compared, heads included (prior_enhance's key,
    qam's value, SAM's)."""
    from sdk.runtime import Graphs

    copy = shutil.copytree(heads_export, tmp_path / "heads")
    m = load_manifest(copy)
    Graphs(m, "cpu", names=tuple(m.graphs))          # all 8 graphs agree with the manifest
    raw = json.loads((copy / "manifest.json").read_text())
    raw["key_channels"] = 8
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="key_channels is 8 but graph 'prior_enhance' output 'key' has 16"):
        Graphs(load_manifest(copy), "cpu", names=("prior_enhance",))


def test_stride_probe_is_cheap(tiny_export):
    """The stride probe (the key encoder on a 16 x 272 zero image) costs a few milliseconds, a
    small part of opening the graphs."""
    from sdk.runtime import Graphs

    m = load_manifest(tiny_export)
    costs = []
    for _ in range(3):
        t0 = time.perf_counter()
        graphs = Graphs(m, "cpu")
        costs.append((graphs.probe_ms, (time.perf_counter() - t0) * 1e3))
    probe, total = min(costs)
    assert probe < 50 and probe < total / 3, costs
    f16 = graphs.run_named("key_encoder", {"image": np.zeros((1, 3, 64, 96), np.float32)})["f16"]
    assert f16.shape[2:] == (4, 6)
