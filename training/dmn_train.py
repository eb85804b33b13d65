"""``python -m training.dmn_train``: train DMN-AOA's modules (:class:`training.dmn.DMNAOA`) on top
of a frozen core network (issue 27 item 7; Zhou et al. §3.1–3.4, §4.1).

The core (key encoder, value encoder, decoder: the bundled ``lite`` by default) is frozen, as the
paper freezes its base feature extractor and proposal generator; its readout over the pixel
memory plays the paper's reference features. Trained: object features (ROI Align + bottleneck),
time embedding, DMN memory/query encoders, AOA projectors, α, β and the dustbin score, and
RefineNet's coarse-mask injections (its copy of the decoder stays frozen unless
``--decoder-lr`` > 0).

A sample is a T-frame clip (:class:`training.datasets.ClipDataset` with the multi-object
synthesis of :mod:`training.synthesis`: up to ``--objects`` objects, copies of an object pasted
as look-alikes). Frame 0 writes both memories with the ground truth; each later frame i:

1. core readout over the pixel memory (frozen, top-k as the sdk), DMN template from the object
   memory with the query in the previous frame's boxes (Eq. 1), relative times drawn
   log-uniformly in 1..``--max-time`` (inference offsets reach thousands of frames);
2. proposals (:mod:`training.dmn_proposals`): the ground truth degraded (jitter, fragments,
   merges, clutter) and, with probability ``--network-prob``, the proposal network's own;
3. ``match`` → assignment A, coarse mask; ``refine`` → logits;
4. losses: the **matching loss** −log A[n, p*] for the proposal p* of highest IoU ≥ 0.5 with
   object n, −log(1 − Σ_p A[n,p]) (the dustbin) when there is none, plus the bootstrapped
   cross-entropy of RefineNet's soft-aggregated masks (§3.4; STCN's 15 % hardest pixels);
5. the predicted masks (detached) write frame i into both memories for the next frame.

Checkpoints every ``--checkpoint-every`` steps in ``OUT/last.safetensors`` + ``.json`` (+
``last.opt.pt``), a line of ``OUT/history.jsonl`` (mean losses, matching accuracy, and the mean
training IoU of RefineNet vs the core decoder on the same frames); rerunning the same command
resumes. ``--final PATH`` writes the fp16 weights (``training/weights/dmn-lite``).
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
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .checkpoint import load_checkpoint
from .datasets import ClipDataset, load_sequences
from .dmn import DMNAOA
from .dmn_proposals import ProposalNoise, boxes_of, match_targets, network_proposals, synthetic_proposals
from .losses import bootstrapped_ce
from .objectives import aggregate_logits
from .synthesis import REST, Synthesis

EPS = 1e-6
TOP_K = 20          # the bundled export's readout top-k (manifest "top_k")
CORE_FROZEN = "refiner.decoder."


def _paths(path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_dmn(path, dmn: DMNAOA, meta: dict, half: bool = False) -> Path:
    """DMNAOA weights → ``path``.safetensors (fp16 with ``half``) + ``.json`` (``meta`` with
    ``kind: "dmn"`` and the hyper-parameters)."""
    st, js = _paths(path)
    st.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in dmn.state_dict().items()}
    save_file(sd, str(st))
    js.write_text(json.dumps({"kind": "dmn", "hparams": dmn.hparams, **meta}, indent=2))
    return st


def load_dmn(path, net) -> tuple[DMNAOA, dict]:
    """Weights of :func:`save_dmn` on the core network ``net`` → (DMNAOA in float32, meta).
    Raises FileNotFoundError naming the missing file, ValueError for a file of another kind."""
    st, js = _paths(path)
    for p in (st, js):
        if not p.is_file():
            raise FileNotFoundError(f"DMN-AOA weights file {p} not found (weights are X.safetensors + X.json)")
    meta = json.loads(js.read_text())
    if meta.get("kind") != "dmn":
        raise ValueError(f"{js} is not a DMN-AOA weights file (kind {meta.get('kind')!r}, expected 'dmn')")
    h = meta["hparams"]
    dmn = DMNAOA(net, roi_size=h["roi_size"], channels=h["channels"], proj_channels=h["proj_channels"],
                 alpha=h["alpha"], sinkhorn_iters=h["sinkhorn_iters"], align=h["align"])
    dmn.load_state_dict({k: v.float() for k, v in load_file(str(st)).items()}, strict=True)
    return dmn, meta


def pool4(masks: torch.Tensor) -> torch.Tensor:
    """[N,H,W] → [N,H/4,W/4]: the mean of each 4×4 cell (as the sdk pools masks for the DMN)."""
    return F.avg_pool2d(masks[:, None], 4)[:, 0]


def times(rng: np.random.Generator, t: int, max_time: int) -> list[float]:
    """Relative times of a clip's T frames: 0, then increasing offsets drawn log-uniformly."""
    gaps = np.exp(rng.uniform(0, math.log(max(2, max_time) / max(1, t - 1)), t - 1))
    return [0.0] + np.cumsum(np.maximum(1, np.round(gaps))).tolist()


def clip_step(core, dmn: DMNAOA, clip: dict, rng: np.random.Generator, noise: ProposalNoise,
              proposal_net=None, network_prob: float = 0.0, proposal_defaults: dict | None = None,
              bootstrap: float = 0.15, max_time: int = 1000) -> dict[str, torch.Tensor]:
    """One clip's forward (module docstring, steps 1–5) → ``match`` (matching loss), ``mask``
    (bootstrapped CE), ``loss`` (their sum) and detached stats ``accuracy`` (objects whose largest
    assignment entry, or the dustbin, is the target), ``iou_refine``, ``iou_core`` (mean IoU of
    the thresholded masks). ``clip``: one :class:`~training.datasets.ClipDataset` item as tensors
    (frames [T,3,S,S], masks [T,N,S,S], others [T,1,S,S], valid [N]); needs ≥ 1 valid object."""
    frames, valid = clip["frames"], clip["valid"] > 0.5
    masks = clip["masks"][:, valid]                                           # [T,N,S,S]
    others = clip["others"]
    t, n = masks.shape[:2]
    stamps = times(rng, t, max_time)
    with torch.no_grad():
        key, f16, f8, f4 = core.encode_key(frames)

        def value(i, own):                                                    # own [N,S,S]
            rest = (own.sum(0, keepdim=True) - own + others[i]).clamp(0, 1)
            return core.encode_value(frames[i:i + 1], f16[i:i + 1], torch.stack([own, rest], 1))

        mem_k, mem_v = [key[0].flatten(1)], [value(0, masks[0]).flatten(2)]
    own4 = pool4(masks[0])
    boxes = boxes_of(own4)
    k, v = dmn.encode_memory(f16[:1], boxes, own4[:, None], torch.zeros(n))
    obj_k, obj_v = [k.flatten(2)], [v.flatten(2)]
    zero = frames.new_zeros(())
    out = {"match": zero, "mask": zero}
    hits = refine_iou = core_iou = 0.0
    classes = torch.arange(1, n + 1, dtype=masks.dtype).view(n, 1, 1)
    for i in range(1, t):
        with torch.no_grad():
            mk = torch.cat(mem_k, 1)[None]
            readout, _ = core.readout(key[i:i + 1], mk, torch.cat(mem_v, 2), torch.ones(mk.shape[2]),
                                      min(TOP_K, mk.shape[2]))
            core_logits = core.decode(readout, f16[i:i + 1], f8[i:i + 1], f4[i:i + 1])
        gt4 = (pool4(masks[i]) > 0.5).float()
        template = dmn.template(f16[i:i + 1], boxes, torch.full((n,), stamps[i]), torch.cat(obj_k, 2),
                                torch.cat(obj_v, 2), torch.ones(n, sum(x.shape[2] for x in obj_k)))
        props = synthetic_proposals(rng, gt4, noise)
        if proposal_net is not None and rng.random() < network_prob:
            props = torch.cat([props, network_proposals(proposal_net, f16[i:i + 1], f8[i:i + 1], f4[i:i + 1],
                                                        proposal_defaults)])
        target = match_targets(gt4, props)
        if len(props):
            assignment, _, coarse = dmn.match(template, f16[i:i + 1], boxes_of(props), props)
            taken = assignment.sum(1)
            chosen = assignment.gather(1, target.clamp(min=0)[:, None])[:, 0]
            nll = torch.where(target >= 0, -torch.log(chosen + EPS), -torch.log((1 - taken).clamp(min=0) + EPS))
            out["match"] = out["match"] + nll.mean() / (t - 1)
            best = torch.where(assignment.max(1).values > 1 - taken, assignment.argmax(1), torch.full_like(target, -1))
            hits += float((best == target).float().mean())
        else:
            coarse = frames.new_zeros((n, 1, *gt4.shape[1:]))
            hits += float((target < 0).float().mean())
        logits = dmn.refine(readout, coarse, f16[i:i + 1], f8[i:i + 1], f4[i:i + 1])     # [N,1,S,S]
        labels = (masks[i] * classes).sum(0).long()[None]
        agg = aggregate_logits(torch.sigmoid(logits[:, 0])[None])                      # [1,N+1,S,S]
        out["mask"] = out["mask"] + bootstrapped_ce(agg, labels, bootstrap) / (t - 1)
        with torch.no_grad():
            pred = F.one_hot(agg.argmax(1)[0], n + 1).permute(2, 0, 1)[1:].float()     # [N,S,S]
            core_pred = F.one_hot(aggregate_logits(torch.sigmoid(core_logits[:, 0])[None]).argmax(1)[0],
                                  n + 1).permute(2, 0, 1)[1:].float()
            refine_iou += _mean_iou(pred, masks[i]) / (t - 1)
            core_iou += _mean_iou(core_pred, masks[i]) / (t - 1)
        if i < t - 1:
            with torch.no_grad():
                mem_k.append(key[i].flatten(1))
                mem_v.append(value(i, pred).flatten(2))
            pred4 = pool4(pred)
            new = boxes_of(pred4)
            boxes = torch.where((new[:, 2:] > new[:, :2]).all(1, keepdim=True), new, boxes)
            k, v = dmn.encode_memory(f16[i:i + 1], boxes, pred4[:, None], torch.full((n,), stamps[i]))
            obj_k.append(k.flatten(2))
            obj_v.append(v.flatten(2))
    out["loss"] = out["match"] + out["mask"]
    out.update(accuracy=torch.tensor(hits / (t - 1)), iou_refine=torch.tensor(refine_iou),
               iou_core=torch.tensor(core_iou))
    return out


def _mean_iou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    inter = (pred * gt).flatten(1).sum(1)
    union = ((pred + gt) > 0).float().flatten(1).sum(1)
    return float((inter / union.clamp(min=1)).mean())


def trainable(dmn: DMNAOA, decoder_lr: float):
    """Parameter groups: every DMN-AOA parameter but RefineNet's decoder copy, and that copy
    (frozen when ``decoder_lr`` is 0)."""
    own = [p for name, p in dmn.named_parameters() if not name.startswith(CORE_FROZEN)]
    copy = [p for name, p in dmn.named_parameters() if name.startswith(CORE_FROZEN)]
    for p in copy:
        p.requires_grad_(decoder_lr > 0)
    return own, copy


def _to_tensors(item: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in item.items()}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--core", default="training/weights/lite.safetensors", show_default=True,
              help="The frozen core network (a vos-train checkpoint): the model whose export gains the DMN graphs.")
@click.option("--data", "roots", multiple=True, default=["../shared/data/davis2016-240p"], show_default=True,
              help="DAVIS-layout root(s) whose train split gives the clips (repeatable).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder: last.safetensors/.json, last.opt.pt, history.jsonl; rerun to resume.")
@click.option("--iterations", default=3000, show_default=True, help="Optimizer steps.")
@click.option("--batch", default=4, show_default=True, help="Clips per step.")
@click.option("--frames", default=3, show_default=True, help="Frames per clip (STCN: 3).")
@click.option("--crop", default=384, show_default=True, help="Square crop side in px.")
@click.option("--objects", default=3, show_default=True, help="Most objects per clip (multi-object synthesis).")
@click.option("--duplicate-prob", default=0.5, show_default=True,
              help="Probability that a pasted object copies one of the clip's (look-alikes).")
@click.option("--max-skip", default=10, show_default=True, help="Largest frame gap in a clip.")
@click.option("--max-time", default=1000, show_default=True, help="Largest relative time drawn for the embedding.")
@click.option("--lr", default=1e-4, show_default=True, help="AdamW learning rate (÷10 at 80 %).")
@click.option("--decoder-lr", default=0.0, show_default=True, help="Learning rate of RefineNet's decoder copy (0: frozen).")
@click.option("--proposals", "proposal_weights", default="training/weights/proposals-lite.safetensors",
              show_default=True, help="Proposal network mixed into the training proposals ('' for none).")
@click.option("--network-prob", default=0.5, show_default=True,
              help="Probability that a frame's proposals also hold the proposal network's.")
@click.option("--checkpoint-every", default=100, show_default=True, help="Steps between checkpoints.")
@click.option("--seed", default=1, show_default=True)
@click.option("--threads", default=None, type=int, help="torch CPU threads (default: torch's).")
@click.option("--time-limit", default=None, type=float, help="Stop (after a checkpoint) past this many seconds.")
@click.option("--final", default=None, help="Also write the fp16 weights here (e.g. training/weights/dmn-lite).")
def main(core, roots, out, iterations, batch, frames, crop, objects, duplicate_prob, max_skip, max_time, lr,
         decoder_lr, proposal_weights, network_prob, checkpoint_every, seed, threads, time_limit, final):
    """Train DMN-AOA's object memory, adaptive alignment, matcher and RefineNet injections on a
    frozen core (issue 27 item 7). The run behind training/weights/dmn-lite (53 min on a 2-core CPU):

    \b
      OMP_NUM_THREADS=1 python -m training.dmn_train --out runs/dmn-lite --iterations 1800 \\
          --threads 1 --final training/weights/dmn-lite

    then add the graphs to an export (see docs/dmn-aoa.md):

    \b
      python -m export.dmn_export --weights training/weights/dmn-lite --export DIR
      python -m export.proposal_export --export DIR"""
    began = time.time()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net, core_meta = load_checkpoint(core)
    net.eval().requires_grad_(False)
    recipe = {"core": str(core), "data": list(roots), "iterations": iterations, "batch": batch, "frames": frames,
              "crop": crop, "objects": objects, "duplicate_prob": duplicate_prob, "max_skip": max_skip,
              "max_time": max_time, "lr": lr, "decoder_lr": decoder_lr, "proposals": proposal_weights,
              "network_prob": network_prob, "seed": seed}
    last = out / "last"
    if _paths(last)[0].is_file():
        dmn, meta = load_dmn(last, net)
        differ = [k for k, v in recipe.items() if meta["recipe"].get(k) != v]
        if differ:
            raise click.UsageError(f"{out} holds a run with another recipe ({', '.join(differ)} differ): "
                                   "rerun it with its own options or pick a new --out")
        start, seconds = meta["state"]["iteration"], meta["state"]["seconds"]
    else:
        dmn, start, seconds = DMNAOA(net), 0, 0.0
    own, copy = trainable(dmn, decoder_lr)
    groups = [{"params": own, "lr": lr}] + ([{"params": copy, "lr": decoder_lr}] if decoder_lr > 0 else [])
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    if start and (out / "last.opt.pt").is_file():
        opt.load_state_dict(torch.load(out / "last.opt.pt", weights_only=True))
    proposal_net, defaults = None, None
    if proposal_weights and network_prob > 0:
        from sdk.proposals import DEFAULT_NMS_IOU, DEFAULT_SCORE_THRESHOLD, DEFAULT_TOP_P

        from .proposal_train import load_proposal_checkpoint
        proposal_net, _ = load_proposal_checkpoint(proposal_weights)
        proposal_net.eval().requires_grad_(False)
        defaults = {"score_threshold": DEFAULT_SCORE_THRESHOLD, "nms_iou": DEFAULT_NMS_IOU, "top_p": DEFAULT_TOP_P}
    sequences = [s for root in roots for s in load_sequences(root, "train")]
    synthesis = Synthesis(objects=objects, multi_prob=0.8 if objects > 1 else 0.0, duplicate_prob=duplicate_prob)
    data = ClipDataset(sequences, crop=crop, num_frames=frames, max_skip=max_skip, mean=net.config["mean"],
                       std=net.config["std"], seed=seed, synthesis=synthesis)
    noise = ProposalNoise()
    out.mkdir(parents=True, exist_ok=True)
    history = out / "history.jsonl"
    sums: dict[str, float] = {}
    dmn.train()
    dmn.refiner.decoder.train(decoder_lr > 0)
    bar = tqdm(range(start, iterations), initial=start, total=iterations, desc="dmn-aoa", unit="step")
    for it in bar:
        t0 = time.time()
        for group, base in zip(opt.param_groups, (lr, decoder_lr)):
            group["lr"] = base * (0.1 if it >= 0.8 * iterations else 1.0)
        rng = np.random.default_rng((seed, it))
        opt.zero_grad(set_to_none=True)
        stats: dict[str, float] = {}
        for b in range(batch):
            clip = _to_tensors(data[int(rng.integers(len(data)))])
            if clip["valid"].sum() == 0:
                continue
            losses = clip_step(net, dmn, clip, rng, noise, proposal_net, network_prob, defaults, max_time=max_time)
            (losses["loss"] / batch).backward()
            for key, value in losses.items():
                stats[key] = stats.get(key, 0.0) + float(value.detach()) / batch
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 5.0)
        opt.step()
        seconds += time.time() - t0
        for key, value in stats.items():
            sums[key] = sums.get(key, 0.0) + value
        sums["steps"] = sums.get("steps", 0) + 1
        bar.set_postfix(loss=f"{stats.get('loss', 0):.3f}", acc=f"{stats.get('accuracy', 0):.2f}")
        done = it + 1
        stop = time_limit is not None and time.time() - began > time_limit
        if done % checkpoint_every == 0 or done == iterations or stop:
            line = {"iteration": done, "seconds": round(seconds, 1),
                    **{k: round(v / sums["steps"], 5) for k, v in sums.items() if k != "steps"},
                    **{k: round(getattr(dmn.matcher, k).detach().item(), 4) for k in ("alpha", "beta", "dustbin")}}
            with history.open("a") as f:
                f.write(json.dumps(line) + "\n")
            sums = {}
            meta = {"recipe": recipe, "core_config": core_meta["config"],
                    "state": {"iteration": done, "seconds": round(seconds, 1)}}
            save_dmn(last, dmn, meta)
            torch.save(opt.state_dict(), out / "last.opt.pt.tmp")
            os.replace(out / "last.opt.pt.tmp", out / "last.opt.pt")
            if stop:
                break
    if final:
        meta = json.loads(_paths(last)[1].read_text())
        meta["history"] = [json.loads(x) for x in history.read_text().splitlines()]
        save_dmn(final, dmn, {k: v for k, v in meta.items() if k not in ("kind", "hparams")}, half=True)
        click.echo(f"wrote {_paths(final)[0]}")


if __name__ == "__main__":
    main()
