"""The sdk against the authors' loops (:mod:`authors_loops`), graph by graph and frame by frame,
teacher-forced and free-running; and the authors' loop against itself nudged by one ulp.

*Teacher forcing*: the authors' loop runs free and records every graph-sized step
(:class:`authors_loops.Trace`). The sdk's :class:`~sdk.Segmenter` then runs the same frames, and
each time it runs one of its graphs on frame t, or soft-aggregates its probabilities, the harness
keeps the sdk's result for the comparison and hands the Segmenter the authors' result of that
step instead. So both sides see the same previous masks (the prior, the value encoder's masks),
the same memory contents (the bank holds the authors' keys and values, in its own layout) and the
same query features; the sdk's own glue still computes each graph's inputs from them (prior,
masks with the other objects' sum, bank readout order, top-k), and those inputs are compared too.
The QAM scores are not handed over: the sdk's policy decides its schedule (admissions, deferrals,
evictions) from its own ``qam`` graph. Differences cannot compound: what is left on each frame is
one step's float32 rounding (ONNX Runtime against torch, NumPy against torch), whatever happened on
earlier frames.

*Free-running*: the same comparison with nothing handed over — how the difference grows.

*One ulp*: the authors' loop twice, the second with the first frame's memory key and value moved
by one float32 ulp (``authors_loops._nudge``) — how the authors' own code amplifies a rounding
difference.

``python tests/authors_forced.py --help`` prints the report for one architecture; the slow tests
in ``tests/test_authors_forced.py`` hold the bounds.
"""
from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sdk.policy_protocol  # noqa: E402
import sdk.segmenter  # noqa: E402
from authors_loops import Result, Trace, qdmn_loop, stcn_loop  # noqa: E402
from sdk import Segmenter  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# The sdk's inputs that the harness compares with the authors' (graph → input names): the glue.
GLUE_INPUTS = {"key_encoder": ("image",), "prior_enhance": ("prior",), "value_encoder": ("masks",)}
# Graphs whose outputs have one row per object (the report breaks their max |Δ| down by object).
PER_OBJECT = ("decoder", "qam", "readout")
# Graphs whose outputs the sdk keeps under teacher forcing: the QAM scores its policy decides on.
OWN_DECISIONS = ("qam",)


def reference(arch: str, net, frames, mask, trace: Trace | None = None, ulp: bool = False, **params) -> Result:
    """The authors' loop for ``arch`` (``stcn``, ``rde``, ``qdmn``) with the export's defaults
    (STCN top-20 every 5; RDE-VOS top-40, θ = 3; QDMN top-50, interval 5, σ 0.8, β 20) or
    ``params`` (QDMN: ``interval``, ``sigma``, ``beta``)."""
    if arch == "qdmn":
        return qdmn_loop(net, frames, mask, interval=params.get("interval", 5), sigma=params.get("sigma", 0.8),
                         limit=params.get("beta", 20), trace=trace, ulp=ulp)
    rde = arch == "rde"
    return stcn_loop(net, frames, mask, top_k=40 if rde else 20, rde_theta=3 if rde else None, trace=trace, ulp=ulp)


@dataclass
class SdkRun:
    """What the sdk computed: per frame the label map, soft probabilities [K+1,Hp,Wp] (padded),
    the frames in memory after the frame, and every graph run as (graph, {name: array}) with
    its outputs and the inputs of :data:`GLUE_INPUTS`; ``quality[t]`` = S̄A_t where the policy
    computed it."""
    labels: list = field(default_factory=list)
    probs: list = field(default_factory=list)
    memory: list = field(default_factory=list)
    graphs: list = field(default_factory=list)
    quality: dict = field(default_factory=dict)


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def run_sdk(export, frames, mask, trace: Trace | None = None, **params) -> SdkRun:
    """The sdk on ``frames`` (first ``mask``), teacher-forced by ``trace`` when given (module
    docstring), else free-running. Raises AssertionError when an authors' tensor does not
    have the shape of the sdk's output it replaces (a layout difference)."""
    seg = Segmenter(export, providers="cpu", **params)
    run = SdkRun()
    graphs, original = seg._graphs, seg._graphs.run
    calls: dict[tuple[int, str], int] = {}

    def forced(name, feeds):
        outputs = original(name, feeds)
        t = seg.frame_index
        index = calls.get((t, name), 0)
        calls[(t, name)] = index + 1
        names = graphs._outputs[name]
        kept = {n: np.array(o) for n, o in zip(names, outputs)}
        kept.update({f"{n} (input)": np.array(feeds[n]) for n in GLUE_INPUTS.get(name, ()) if n in feeds})
        run.graphs[t].append((name, kept))
        given = trace.outputs(t, name) if trace is not None and name not in OWN_DECISIONS else []
        if index >= len(given):
            return outputs
        replaced = []
        for n, o in zip(names, outputs):
            if n not in given[index]:                 # readout's usage: the bank's layout, the sdk's own
                replaced.append(o)
                continue
            theirs = given[index][n]
            assert theirs.shape == o.shape, f"frame {t}, {name}.{n}: authors {theirs.shape}, sdk {o.shape}"
            replaced.append(theirs.copy())
        return replaced

    def aggregate(probs, work=None):
        out = soft_aggregate(probs, work)
        run.probs.append(np.array(out))
        given = trace.outputs(seg.frame_index, "aggregate") if trace is not None else []
        if given:                                    # the authors' masks: prior, value encoder, output
            assert given[0]["prob"].shape == out.shape, f"frame {seg.frame_index}: aggregate shapes differ"
            out[...] = given[0]["prob"]
        return out

    def quality(self, t, scores):
        value = score_of(self, t, scores)
        run.quality[t] = float(value)
        return value

    soft_aggregate, score_of = sdk.segmenter.soft_aggregate, sdk.policy_protocol.Quality.__call__
    with _patched(graphs, "run", forced), _patched(sdk.segmenter, "soft_aggregate", aggregate), \
            _patched(sdk.policy_protocol.Quality, "__call__", quality):
        for t, frame in enumerate(frames):
            run.graphs.append([])
            run.labels.append(seg.step(frame, mask if t == 0 else None))
            run.memory.append(seg.bank.memory_frames)
    return run


def _diff(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float, float]:
    """(max |Δ|, mean |Δ|, max |theirs|) of two arrays of one shape (``theirs`` reshaped)."""
    theirs = theirs.reshape(ours.shape)
    delta = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    return float(delta.max()), float(delta.mean()), float(np.abs(theirs).max())


def _per_object(ours: np.ndarray, theirs: np.ndarray) -> list[float]:
    """max |Δ| of each object (the leading axis) of two arrays of one shape."""
    delta = np.abs(ours.astype(np.float64) - theirs.reshape(ours.shape).astype(np.float64))
    return delta.reshape(len(delta), -1).max(1).tolist()


def compare(run: SdkRun, ref: Result, trace: Trace) -> list[dict]:
    """Per frame t: {"frame": t, "<graph>.<output>": (max |Δ|, mean |Δ|, max |authors'|), …,
    "prob": the sdk's own soft-aggregated probabilities against the authors' (same tuple);
    "decoder.logits per object", "qam.score per object", "readout.readout per object", "prob per
    object": max |Δ| of each object;
    "quality": |Δ S̄A| or None, "pixels": pixels of the padded frame whose argmax of those
    differs, "memory": (sdk's, authors' frames in memory)} — graph runs matched by order within
    the frame."""
    rows = []
    for t in range(len(run.labels)):
        row = {"frame": t}
        seen: dict[str, int] = {}
        for name, tensors in run.graphs[t]:
            index = seen.get(name, 0)
            seen[name] = index + 1
            given = trace.outputs(t, name)
            if index >= len(given):
                continue
            for n, ours in tensors.items():
                key = n.removesuffix(" (input)")
                if key in given[index]:
                    row[f"{name}.{n}"] = _diff(ours, given[index][key])
                    if name in PER_OBJECT and key == n:
                        row[f"{name}.{n} per object"] = _per_object(ours, given[index][key])
        (theirs,) = trace.outputs(t, "aggregate")
        row["prob"] = _diff(run.probs[t], theirs["prob"])
        row["prob per object"] = _per_object(run.probs[t][1:], theirs["prob"][1:])
        quality = trace.outputs(t, "quality")
        row["quality"] = (abs(run.quality[t] - float(quality[0]["score"]))
                          if t in run.quality and quality else None)
        row["pixels"] = int(np.count_nonzero(run.probs[t].argmax(0) != theirs["prob"].argmax(0)))
        row["memory"] = (run.memory[t], ref.memory[t])
        rows.append(row)
    return rows


def ulp_divergence(arch: str, net, frames, mask, ref: Result, **params) -> list[dict]:
    """The authors' loop on ``frames`` with the first frame's memory nudged by one ulp against
    ``ref`` (its run without, on these frames or more): per frame {"prob": (max |Δprob|, mean
    |Δprob|, max |authors'|), "pixels": label pixels that differ, "memory": (nudged, ref)}."""
    nudged = reference(arch, net, frames, mask, ulp=True, **params)
    return [{"frame": t, "prob": _diff(nudged.probs[t], ref.probs[t]),
             "pixels": int(np.count_nonzero(nudged.labels[t] != ref.labels[t])),
             "memory": (nudged.memory[t], ref.memory[t])} for t in range(len(nudged.labels))]


def measure_batch_norm(arch: str, net, frames, mask) -> nn.Module:
    """Replace every batch norm's running statistics of ``net`` by those measured on the
    authors' loop over ``frames`` (cumulative averages of the batch statistics), as a user
    who calibrates random or re-initialised weights on the first frames does. Returns ``net``
    in eval mode. ``mask`` needs ≥ 2 objects: a batch norm after a global pooling (ASPP's)
    sees one value per channel with one object, which torch refuses to train on. Weights built this way sit near ties at many pixels (the decoder's bias is
    no longer centred), where a rounding difference can flip a label."""
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    reference(arch, net, frames, mask)
    return net.eval()


def clip(name: str = "schoolgirls", n: int = 10, objects: int = 3, scale: float = 1.0):
    """First ``n`` RGB frames (uint8 [H,W,3]) of a 240p DAVIS sequence, resized by ``scale``
    (area for frames, nearest for the mask), and its first mask keeping labels 1..``objects``.
    Raises FileNotFoundError when ``../shared/data`` lacks it."""
    import cv2

    from sdk.io import iter_frames, read_mask
    root = DATA / ("davis2017-240p" if name == "schoolgirls" else "davis2016-240p")
    folder = root / "JPEGImages" / name
    if not folder.is_dir():
        raise FileNotFoundError(f"needs {folder} (../shared/data)")
    frames = [rgb for _, (_, rgb) in zip(range(n), iter_frames(folder))]
    mask = read_mask(root / "Annotations" / name / "00000.png")
    mask = np.where(mask <= objects, mask, 0).astype(np.uint8)
    if scale != 1.0:
        size = (round(frames[0].shape[1] * scale), round(frames[0].shape[0] * scale))
        frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    return frames, mask


def _worst(rows: list[dict], key: str) -> tuple[float, float]:
    """(max |Δ|, max |authors'|) of ``key`` over the frames of ``rows``."""
    cells = [row[key] for row in rows if key in row]
    return max(c[0] for c in cells), max(c[2] for c in cells)


def report(arch: str, checkpoint: Path, export: Path, frames: int, objects: int, scale: float,
           measured_bn: bool, params: dict) -> dict:
    """Teacher-forced, free-running and one-ulp comparisons → a JSON-able dict (printed by
    :func:`main`)."""
    from training.authors.checkpoints import load_authors_checkpoint
    torch.set_num_threads(2)
    video, mask = clip("schoolgirls", frames, objects, scale)
    net = load_authors_checkpoint(checkpoint)
    if measured_bn:                                  # on ≥ 3 objects: see measure_batch_norm
        bn_objects = max(objects, 3)
        net = measure_batch_norm(arch, net, video[:3], clip("schoolgirls", 3, bn_objects, scale)[1])
        tag = f"bn-{bn_objects}obj-x{scale:g}"         # the statistics depend on the clip's objects and size
        path = export.parent / f"{checkpoint.stem}-{tag}.pth"
        torch.save(net.state_dict(), path)
        from click.testing import CliRunner

        from export.cli import main as vos_export
        export = export.parent / f"{export.name}-{tag}"
        if not (export / "manifest.json").exists():
            result = CliRunner().invoke(vos_export, ["--checkpoint", str(path), "--out", str(export)])
            if result.exit_code:
                raise SystemExit(result.output)
    trace = Trace()
    ref = reference(arch, net, video, mask, trace=trace, **params)
    forced = compare(run_sdk(export, video, mask, trace=trace, **params), ref, trace)
    free = compare(run_sdk(export, video, mask, **params), ref, trace)
    ulp = ulp_divergence(arch, net, video, mask, ref, **params)
    graphs = sorted({k for row in forced for k in row if "." in k and "per object" not in k} | {"prob"})
    return {"arch": arch, "frames": frames, "objects": objects, "size": list(video[0].shape[:2]),
            "measured_bn": measured_bn, "params": params,
            "forced_max": {g: _worst(forced, g) for g in graphs},
            "forced": forced, "free": free, "ulp": ulp}


def _table(out: dict) -> str:
    lines = [f"# {out['arch']}: schoolgirls {out['objects']} objects, {out['size'][0]}x{out['size'][1]}, "
             f"{out['frames']} frames, BN {'measured' if out['measured_bn'] else 'synthetic'} {out['params']}",
             "", "teacher-forced, worst over frames (max |Δ|):"]
    lines += [f"  {g:32s} {v:.2e}  (max |authors'| {m:.2e}, ratio {v / m if m else 0:.1e})"
              for g, (v, m) in out["forced_max"].items()]
    lines += ["", "frame | forced max|Δlogit| max|Δprob| |ΔS̄A| px | free max|Δlogit| max|Δprob| px "
              "| 1-ulp max|Δprob| px | memory (forced sdk / authors; free sdk; ulp)"]
    for f, r, u in zip(out["forced"], out["free"], out["ulp"]):
        logit = f.get("decoder.logits", (float("nan"),))[0]
        quality = "-" if f["quality"] is None else f"{f['quality']:.1e}"
        lines.append(f"{f['frame']:5d} | {logit:.1e} {f['prob'][0]:.1e} {quality} {f['pixels']} | "
                     f"{r.get('decoder.logits', (float('nan'),))[0]:.1e} {r['prob'][0]:.1e} {r['pixels']} | "
                     f"{u['prob'][0]:.1e} {u['pixels']} | {f['memory'][0]} / {f['memory'][1]}; {r['memory'][0]}; "
                     f"{u['memory'][0]}")
    return "\n".join(lines)


def _rounded(value):
    """``value`` with every float rounded to 3 significant digits (a compact results file)."""
    if isinstance(value, float):
        return float(f"{value:.3g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def main(argv=None) -> None:
    import click

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--arch", type=click.Choice(["stcn", "rde", "qdmn"]), required=True)
    @click.option("--frames", "n", default=60, show_default=True, help="Frames of schoolgirls (240p) to run.")
    @click.option("--objects", default=3, show_default=True, help="Objects kept (labels 1..N).")
    @click.option("--scale", default=1.0, show_default=True, help="Resize factor of the 240p frames.")
    @click.option("--seed", default=0, show_default=True, help="Seed of the synthetic weights.")
    @click.option("--measured-bn/--synthetic-bn", default=True, show_default=True,
                  help="Batch-norm statistics measured on the first 3 frames (the issue's weights) or the "
                       "synthetic ones of training.authors.synthetic.")
    @click.option("--param", "assignments", multiple=True, help="QDMN interval=, sigma=, beta= (repeatable).")
    @click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/authors-forced"),
                  show_default=True, help="Folder for the checkpoint and its export.")
    @click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report.")
    def command(arch, n, objects, scale, seed, measured_bn, assignments, work, json_out):
        """Teacher-forced and free-running comparison of the sdk with the authors' loop, and the
        authors' loop against itself with one ulp at frame 0, on synthetic weights in the
        authors' layout."""
        from click.testing import CliRunner

        from export.cli import main as vos_export
        from training.authors.synthetic import write_synthetic_checkpoint
        params = {k: (float(v) if k == "sigma" else int(v)) for k, v in (a.split("=", 1) for a in assignments)}
        work.mkdir(parents=True, exist_ok=True)
        checkpoint = write_synthetic_checkpoint(work / f"{arch}-{seed}.pth", arch, seed=seed)
        export = work / f"{arch}-{seed}"
        if not (export / "manifest.json").exists():
            result = CliRunner().invoke(vos_export, ["--checkpoint", str(checkpoint), "--out", str(export)])
            if result.exit_code:
                raise SystemExit(result.output)
        out = report(arch, checkpoint, export, n, objects, scale, measured_bn, params)
        click.echo(_table(out))
        if json_out:
            json_out.write_text(json.dumps(_rounded(out)) + "\n")

    command.main(args=argv, prog_name="python tests/authors_forced.py")


if __name__ == "__main__":
    main()
