"""``python -m training.proposal_train``: train the SOLOv2-style proposal head
(:mod:`training.proposal_net`) on cached features of the frozen bundled key encoder.

Two phases, both resumable (rerun the same command):
1. the cache (:mod:`training.proposal_data`): ``--cache-clips`` synthetic multi-object 2-frame
   clips from ``--data`` (default: DAVIS 2016 240p train; ``schoolgirls`` is left out, it is a
   recall-evaluation sequence), encoded once by the key encoder of ``--encoder``;
2. the head: AdamW, batch ``--batch``, ``--iterations`` steps, lr ÷10 at 80 %; every
   ``--checkpoint-every`` steps ``OUT/last.safetensors`` + ``.json`` (+ ``last.opt.pt``: the
   optimizer) and a line of ``OUT/history.jsonl`` (mean train losses since the last line and the
   loss on ``--held-out`` cached samples kept out of training, and the recall on the real frames of
   the ``--val-sequences`` left out of the cache), and ``OUT/best.*`` whenever that real-frame
   mean best IoU is the highest so far (without validation sequences: the held-out loss lowest). Batches are drawn from a
   generator seeded by (seed, iteration), so a resumed run sees the batches it would have seen.
``--final`` writes the fp16 weights (e.g. ``training/weights/proposals-lite``) of ``best`` (of
``last`` without a held-out set).
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import click
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .proposal_net import ProposalNet, proposal_loss


def _paths(path):
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_proposal_checkpoint(path, net: ProposalNet, state: dict | None = None, half: bool = False) -> Path:
    """Write ``path`` (.safetensors, fp16 with ``half``) + .json (``config``, ``state``, dtype)
    atomically. Returns the .safetensors path."""
    st, js = _paths(path)
    st.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(st) + ".tmp")
    os.chmod(str(st) + ".tmp", 0o644)
    os.replace(str(st) + ".tmp", st)
    js.write_text(json.dumps({"kind": "proposals", "config": net.config, "state": state or {},
                              "dtype": "float16" if half else "float32"}, indent=2))
    return st


def load_proposal_checkpoint(path) -> tuple[ProposalNet, dict]:
    """Read a proposal checkpoint → (network in float32, its JSON). Raises FileNotFoundError
    naming the missing file, ValueError when the JSON is not a proposal net's."""
    st, js = _paths(path)
    for p in (st, js):
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint file {p} not found (a checkpoint is X.safetensors + X.json)")
    meta = json.loads(js.read_text())
    if meta.get("kind") != "proposals":
        raise ValueError(f"{js} is not a proposal-network checkpoint (no \"kind\": \"proposals\")")
    net = ProposalNet(meta["config"])
    net.load_state_dict({k: v.float() for k, v in load_file(str(st)).items()}, strict=True)
    return net, meta


def _batch(cache, index):
    from .proposal_data import batch_from_cache
    f16, f8, f4, inst, cate, owner = batch_from_cache(cache, index)
    return f16, f8, f4, inst, (cate, owner)


@torch.no_grad()
def real_recall(net, frames, score_threshold: float = 0.01, nms_iou: float = 0.4, top: int = 30) -> dict:
    """Recall of the objects of real validation frames (:func:`training.proposal_data.real_frames`)
    among the top ``top`` proposals after the score threshold and box NMS ``nms_iou`` (as
    ``benchmarks/proposal_recall.py``, on the padded frame): recall@0.5, recall@0.7, mean best IoU."""
    import torch.nn.functional as F

    from .proposal_metrics import best_ious, nms

    net.eval()
    ious = []
    for fr in frames:
        boxes, scores, masks = net.propose(fr["f16"].float(), fr["f8"].float(), fr["f4"].float())
        keep = nms(boxes.numpy(), scores.numpy(), nms_iou, top, score_threshold)
        gt = fr["gt"]
        if len(keep):
            up = F.interpolate(masks[torch.from_numpy(keep)][None], size=gt.shape[1:], mode="bilinear",
                               align_corners=False)[0].numpy() > 0.5
        else:
            up = np.zeros((0,) + gt.shape[1:], bool)
        ious.extend(best_ious(up, gt).tolist())
    net.train()
    ious = np.asarray(ious)
    return {"recall@0.5": round(float((ious >= 0.5).mean()), 4), "recall@0.7": round(float((ious >= 0.7).mean()), 4),
            "mean_best_iou": round(float(ious.mean()), 4), "objects": int(len(ious))}


@torch.no_grad()
def held_out_loss(net, cache, index, batch=16) -> dict:
    """Mean losses over cached samples ``index`` (eval mode, no gradient)."""
    net.eval()
    sums, n = {"loss": 0.0, "cate": 0.0, "mask": 0.0}, 0
    for i in range(0, len(index), batch):
        idx = index[i:i + batch]
        f16, f8, f4, inst, tg = _batch(cache, idx)
        out = proposal_loss(net, f16, f8, f4, inst, targets=tg, max_masks=10**6)
        for k in sums:
            sums[k] += float(out[k]) * len(idx)
        n += len(idx)
    net.train()
    return {k: round(v / n, 5) for k, v in sums.items()}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", "data", multiple=True, default=("../shared/data/davis2016-240p:train",), show_default=True,
              help="DAVIS-layout ROOT:SPLIT to synthesise frames from (repeatable).")
@click.option("--encoder", default="training/weights/lite.safetensors", show_default=True,
              type=click.Path(exists=True, dir_okay=False), help="Checkpoint whose (frozen) key encoder gives f16/f8/f4.")
@click.option("--cache", "cache_dir", default="runs/proposals-cache", show_default=True,
              type=click.Path(file_okay=False), help="Feature cache folder (built first if incomplete).")
@click.option("--cache-clips", default=6000, show_default=True, type=click.IntRange(1),
              help="Synthetic clips in the cache (--frames-per-clip samples each).")
@click.option("--frames-per-clip", default=1, show_default=True, type=click.IntRange(1, 2),
              help="Samples per synthetic clip (2 = both frames of the clip, near-duplicates).")
@click.option("--crop", default=384, show_default=True, type=click.IntRange(64), help="Crop side in px (multiple of 16).")
@click.option("--held-out", default=200, show_default=True, type=click.IntRange(0),
              help="Cached samples (the last ones) kept out of training for the held-out loss.")
@click.option("--val-sequences", default="dance-jump,rhino,car-turn,mallard-water", show_default=True,
              help="Comma-separated sequences of the first --data root left out of the cache; their real frames "
                   "(every 4th, 480 px internal) give the recall that picks best.* (empty: pick by held-out loss).")
@click.option("--out", default="runs/proposals", show_default=True, type=click.Path(file_okay=False),
              help="Run folder (last.safetensors/.json, last.opt.pt, history.jsonl); rerunning resumes.")
@click.option("--iterations", default=4000, show_default=True, type=click.IntRange(1))
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--weight-decay", default=1e-4, show_default=True, type=float, help="AdamW weight decay.")
@click.option("--init", "init", type=click.Path(exists=True, dir_okay=False),
              help="Start a new run from this proposal checkpoint's weights (ignored when resuming).")
@click.option("--checkpoint-every", default=200, show_default=True, type=click.IntRange(1))
@click.option("--threads", type=click.IntRange(1), help="torch CPU threads (default: torch's choice).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--final", type=click.Path(dir_okay=False),
              help="At the end write fp16 weights here (X.safetensors + X.json), e.g. training/weights/proposals-lite.")
def main(data, encoder, cache_dir, cache_clips, frames_per_clip, crop, held_out, val_sequences, out, iterations, batch, lr,
         weight_decay, init, checkpoint_every, threads, seed, final):
    """Train the class-agnostic SOLOv2-style proposal head (DMN-AOA §3.1) on the frozen key encoder."""
    from .checkpoint import load_checkpoint
    from .datasets import load_sequences
    from .proposal_data import build_cache, load_cache, real_frames

    if threads:
        torch.set_num_threads(threads)
    roots = []
    for d in data:
        root, _, split = d.rpartition(":")
        if not root or not Path(root).is_dir():
            raise click.BadParameter(f"{d!r} is not ROOT:SPLIT with an existing ROOT", param_hint="--data")
        roots.append((root, split))
    t0 = time.time()
    vos, _ = load_checkpoint(encoder)
    vos.eval()
    sequences = [s for root, split in roots for s in load_sequences(root, split)]
    val_names = [v for v in val_sequences.split(",") if v]
    missing = sorted(set(val_names) - {s.name for s in sequences})
    if missing:
        raise click.BadParameter(f"{missing} are not sequences of --data", param_hint="--val-sequences")
    build_cache(vos.key_encoder, cache_dir, roots, cache_clips, crop=crop, seed=seed,
                mean=vos.config["mean"], std=vos.config["std"], frames_per_clip=frames_per_clip,
                exclude=val_names, sequences=sequences)
    val = real_frames(vos.key_encoder, [s for s in sequences if s.name in val_names],
                      mean=vos.config["mean"], std=vos.config["std"]) if val_names else []
    del vos, sequences
    cache = load_cache(cache_dir)
    n = cache["f16"].shape[0]
    if held_out >= n:
        raise click.BadParameter(f"--held-out {held_out} leaves no training sample of {n}", param_hint="--held-out")
    train_n, held = n - held_out, torch.arange(n - held_out, n)
    click.echo(f"cache: {n} samples ({train_n} train, {held_out} held out), {time.time() - t0:.0f} s")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    net = load_proposal_checkpoint(init)[0] if init else ProposalNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    start, elapsed = 0, 0.0
    if (out / "last.safetensors").is_file():
        net, meta = load_proposal_checkpoint(out / "last.safetensors")
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        opt.load_state_dict(torch.load(out / "last.opt.pt", weights_only=True))
        start, elapsed = meta["state"]["iteration"], meta["state"].get("seconds", 0.0)
        click.echo(f"resuming at iteration {start}")
    net.train()
    decay_at = int(0.8 * iterations)
    sums, count, t_start = {"loss": 0.0, "cate": 0.0, "mask": 0.0, "positives": 0.0}, 0, time.time()
    for it in tqdm(range(start, iterations), initial=start, total=iterations, desc="proposal head"):
        for g in opt.param_groups:
            g["lr"] = lr * (0.1 if it >= decay_at else 1.0) * min(1.0, (it + 1) / 100)   # 100-step warm-up
        gen = torch.Generator().manual_seed(seed * 1_000_003 + it)
        idx = torch.randint(0, train_n, (batch,), generator=gen)
        f16, f8, f4, inst, tg = _batch(cache, idx)
        losses = proposal_loss(net, f16, f8, f4, inst, targets=tg, generator=gen)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        if not math.isfinite(float(losses["loss"].detach())):
            raise click.ClickException(f"loss is {float(losses['loss'].detach())} at iteration {it}")
        for k in sums:
            sums[k] += float(losses[k].detach())
        count += 1
        done = it + 1
        if done % checkpoint_every == 0 or done == iterations:
            seconds = elapsed + time.time() - t_start
            line = {"iteration": done, "seconds": round(seconds, 1), "lr": opt.param_groups[0]["lr"],
                    "train": {k: round(v / count, 5) for k, v in sums.items()}}
            if held_out:
                line["held_out"] = held_out_loss(net, cache, held)
            if val:
                line["val"] = real_recall(net, val)
            with open(out / "history.jsonl", "a") as fh:
                fh.write(json.dumps(line) + "\n")
            state = {"iteration": done, "seconds": round(seconds, 1), "iterations": iterations, "batch": batch,
                     "lr": lr, "weight_decay": weight_decay, "init": init, "seed": seed, "crop": crop, "cache": json.loads((Path(cache_dir) / "cache.json").read_text()),
                     "encoder": encoder}
            torch.save(opt.state_dict(), str(out / "last.opt.pt") + ".tmp")
            os.replace(str(out / "last.opt.pt") + ".tmp", out / "last.opt.pt")
            save_proposal_checkpoint(out / "last", net, state)
            # best.*: the highest real-frame mean best IoU, else the lowest held-out loss
            merit = -line["val"]["mean_best_iou"] if val else line["held_out"]["loss"] if held_out else None
            best_js = out / "best.json"
            best = json.loads(best_js.read_text())["state"]["merit"] if best_js.is_file() else math.inf
            if merit is not None and merit < best:
                save_proposal_checkpoint(out / "best", net, {**state, "merit": merit,
                                                             **{k: line[k] for k in ("held_out", "val") if k in line}})
            tqdm.write(json.dumps(line))
            sums, count = {k: 0.0 for k in sums}, 0
    if final:
        pick = out / ("best" if (out / "best.json").is_file() else "last")
        net, meta = load_proposal_checkpoint(pick)
        save_proposal_checkpoint(final, net, {**meta["state"], "picked": pick.name}, half=True)
        click.echo(f"wrote {final}")


if __name__ == "__main__":
    main()
