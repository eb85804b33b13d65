"""Time of the sdk's proposal post-processing (NumPy/OpenCV, no graph): raw outputs of each
proposals format → :class:`sdk.proposals.Proposals` (threshold 0.05, box NMS 0.4, top 30, masks
onto the f4 grid), on synthetic outputs of realistic size for a 480 px frame (padded internal
input 480×864, 16:9). The graphs themselves are timed by vos-bench's stage breakdown.

    python -m benchmarks.proposals_post --out benchmarks/results/proposals-post-r480.json
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import cv2
import numpy as np

from benchmarks.common import machine_info
from sdk.proposal_formats import Letterbox, to_proposals

STAGES = {"score_threshold": 0.05, "nms_iou": 0.4, "top_p": 30}


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def cases(height: int, width: int, seed: int = 0) -> dict:
    """{case name: (function, description)} on synthetic outputs (seeded)."""
    rng = np.random.default_rng(seed)
    det = np.zeros((1, 116, 8400), np.float32)            # YOLOv8-seg 640, 80 classes
    det[0, 0:2] = rng.uniform(0, 640, (2, 8400))
    det[0, 2:4] = rng.uniform(10, 200, (2, 8400))
    det[0, 4:84] = rng.uniform(0, 0.06, (80, 8400))
    det[0, 4, :600] = rng.uniform(0.05, 1, 600)
    det[0, 84:] = rng.normal(0, 1, (32, 8400))
    protos = rng.normal(0, 1, (1, 32, 160, 160)).astype(np.float32)
    lb = Letterbox.for_image(height, width, (640, 640))
    xy = rng.uniform(0, min(height, width) - 320, (100, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 300, (100, 2))], 1).astype(np.float32)
    scores = np.sort(rng.uniform(0.05, 1, 100))[::-1].astype(np.float32)
    full = {"boxes": boxes, "scores": scores, "labels": np.ones(100, np.int64),
            "masks": rng.uniform(0, 1, (100, 1, height, width)).astype(np.float32)}
    box28 = {**full, "masks": rng.uniform(0, 1, (100, 1, 28, 28)).astype(np.float32)}
    vos = {"boxes": boxes, "scores": scores,
           "masks": rng.uniform(0, 1, (100, height // 4, width // 4)).astype(np.float32)}
    size = (height, width)
    image = rng.uniform(0, 1, (3, height, width)).astype(np.float32)
    return {
        "yolo-seg": (lambda: to_proposals("yolo-seg", "yolo-prototypes", {"output0": det, "output1": protos}, size,
                                          STAGES, lb), "640 letterbox, 8400 anchors (600 above 0.05), 80 classes"),
        "yolo-seg letterbox image": (lambda: lb.image(image), "internal RGB → 640×640 input"),
        "maskrcnn full-frame": (lambda: to_proposals("maskrcnn", "full-frame", full, size, STAGES),
                                "100 detections, masks [100,1,H,W]"),
        "maskrcnn box-28": (lambda: to_proposals("maskrcnn", "box-28", box28, size, STAGES),
                            "100 detections, masks [100,1,28,28]"),
        "vosedge": (lambda: to_proposals("vosedge", "full-frame-f4", vos, size, STAGES),
                    "100 proposals, masks [100,H/4,W/4]"),
    }


@click.command()
@click.option("--height", default=480, show_default=True)
@click.option("--width", default=864, show_default=True)
@click.option("--repeats", default=30, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(height, width, repeats, out):
    """Median ms of each format's post-processing; JSON to --out (and stdout)."""
    cv2.setNumThreads(1)
    result = {"what": "sdk proposal post-processing (threshold 0.05, box NMS 0.4, top 30, masks → f4 grid), "
                      "synthetic outputs, median of repeats, one thread",
              "internal_size": [height, width], "repeats": repeats, "machine": machine_info(["CPUExecutionProvider"]),
              "median_ms": {}, "cases": {}}
    for name, (fn, description) in cases(height, width).items():
        result["median_ms"][name] = round(_median_ms(fn, repeats), 2)
        result["cases"][name] = description
    text = json.dumps(result, indent=2)
    click.echo(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
