"""Issue 28 readers: YouTube-VOS 2019, DAVIS 2017 official, static folders, mixtures."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.dataset_fixtures import make_davis2017, make_static, make_youtube_vos
from training.data import LayoutError, MixtureDataset, read_davis2017, read_static_folder, read_youtube_vos
from training.data.mixture import DividedSchedule
from training.datasets import ClipDataset
from training.static import StaticPseudoVideoDataset

DAVIS2017 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis2017-240p"


def test_youtube_vos_reads_annotated_frames_only(tmp_path):
    seqs = read_youtube_vos(make_youtube_vos(tmp_path / "yv", videos=2, frames=4))
    assert [s.name for s in seqs] == ["v0000", "v0001"]
    assert len(seqs[0].frames) == 4 and len(seqs[0].masks) == 4      # the unannotated JPEG left out
    assert seqs[0].objects == [1, 2]
    f, m = seqs[0].frames[1], seqs[0].masks[1]
    assert f.shape == (48, 64, 3) and f.dtype == np.uint8
    assert set(np.unique(m).tolist()) == {0, 1, 2}
    assert pickle.loads(pickle.dumps(seqs[0].frames)).paths == seqs[0].frames.paths   # workers get paths


def test_youtube_vos_errors_name_the_file(tmp_path):
    root = make_youtube_vos(tmp_path / "yv", videos=1, frames=3)
    (root / "meta.json").write_text("{not json")
    with pytest.raises(LayoutError, match="meta.json"):
        read_youtube_vos(root)
    (root / "meta.json").write_text(json.dumps({"videos": {"v0000": {"objects": {}}, "gone": {"objects": {}}}}))
    with pytest.raises(LayoutError, match="gone"):
        read_youtube_vos(root)
    (root / "meta.json").unlink()
    with pytest.raises(LayoutError, match="meta.json"):
        read_youtube_vos(root)


def test_davis2017_official_layout_multi_object(tmp_path):
    root = make_davis2017(tmp_path / "d17", train=2, val=1, frames=5, objects=3)
    train, val = read_davis2017(root, "train"), read_davis2017(root, "val")
    assert [s.name for s in train] == ["tr0", "tr1"] and [s.name for s in val] == ["va0"]
    assert set(np.unique(train[0].masks[0]).tolist()) == {0, 1, 2, 3}
    with pytest.raises(LayoutError, match="test-dev.txt"):
        read_davis2017(root, "test-dev")
    (root / "ImageSets" / "2017" / "train.txt").write_text("tr0\nmissing\n")
    with pytest.raises(LayoutError, match="missing"):
        read_davis2017(root, "train")


@pytest.mark.skipif(not DAVIS2017.is_dir(), reason="../shared/data/davis2017-240p (DAVIS frames) not present")
def test_davis2017_reader_on_shared_data():
    seqs = read_davis2017(DAVIS2017, "train")
    assert len(seqs) > 0 and seqs[0].frames[0].ndim == 3


@pytest.mark.parametrize("layout", ["pairs", "ecssd", "duts"])
def test_static_layouts_threshold_at_128(tmp_path, layout):
    seqs = read_static_folder(make_static(tmp_path / layout, layout, images=3))
    assert len(seqs) == 3 and all(len(s.frames) == 1 for s in seqs)
    m = seqs[0].masks[0]
    assert set(np.unique(m).tolist()) == {0, 1}
    assert m[0].max() == 0 and m[1].min() == 1          # 127 → 0, 128 → 1
    ds = StaticPseudoVideoDataset(seqs, crop=32, num_frames=3, min_pixels=10, length=4)
    assert ds[0]["frames"].shape == (3, 3, 32, 32)


def test_static_errors(tmp_path):
    with pytest.raises(LayoutError, match="no folder"):
        read_static_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="no <stem>.jpg"):
        read_static_folder(tmp_path / "empty")
    root = make_static(tmp_path / "e", "ecssd", images=2)
    (root / "ground_truth_mask" / "1.png").unlink()
    with pytest.raises(LayoutError, match="1.jpg has no mask"):
        read_static_folder(root)


def test_mixture_follows_stcn_ratio(tmp_path):
    yv = read_youtube_vos(make_youtube_vos(tmp_path / "yv", videos=4, frames=4))
    davis = read_davis2017(make_davis2017(tmp_path / "d", train=2, val=0, frames=4))
    kw = dict(crop=32, num_frames=3, length=400)
    parts = [(ClipDataset(davis, **kw, skip_schedule=lambda i: 5), 5),
             (ClipDataset(yv, **kw, skip_schedule=DividedSchedule(lambda i: 5, 5)), 1)]
    mix = MixtureDataset(parts, length=400)
    assert mix.weights == pytest.approx([10 / 14, 4 / 14])       # 5·2 DAVIS videos against 4
    share = np.mean([mix.part_of(i) == 0 for i in range(400)])
    assert 0.6 < share < 0.82
    item = mix[3]
    assert item["frames"].shape == (3, 3, 32, 32) and np.array_equal(mix[3]["masks"], item["masks"])
    assert DividedSchedule(lambda i: 3, 5)(0) == 1
    with pytest.raises(ValueError, match="repeats"):
        MixtureDataset([(parts[0][0], 0)], length=1)


def test_vos_train_runs_a_datasets_mixture(tmp_path):
    """A config with ``datasets:`` (YouTube-VOS + DAVIS 2017 ×5) trains through vos-train's loop
    with frames decoded from disk, and resumes."""
    torch = pytest.importorskip("torch")
    from tests.conftest import TINY_CONFIG
    from training.train import ConfigError, load_config, train

    torch.set_num_threads(1)
    yv = make_youtube_vos(tmp_path / "yv", videos=2, frames=4)
    d17 = make_davis2017(tmp_path / "d17", train=1, val=0, frames=4)
    cfg = {**load_config("tiny"), "network": TINY_CONFIG, "crop": 32, "iterations": 2, "checkpoint_every": 1,
           "datasets": [{"reader": "davis2017", "root": str(d17), "repeat": 5},
                        {"reader": "youtube_vos", "root": str(yv), "skip_divisor": 5}]}
    last = train(cfg, [], tmp_path / "run", progress=False)
    lines = (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    assert last.is_file() and len(lines) == 2 and np.isfinite(json.loads(lines[-1])["loss"])
    with pytest.raises(ConfigError, match="datasets\\[0\\]"):
        train({**cfg, "datasets": [{"reader": "nope", "root": "x"}]}, [], tmp_path / "run2", progress=False)
