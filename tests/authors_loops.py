"""The authors' DAVIS inference loops, restated in torch for the tests (our own code, written
from the facts of ``../shared/docs/DESIGN.md`` and the authors' ``eval_davis.py`` /
``inference_core.py``): STCN every-5, RDE-VOS ``two-frames-compress``, QDMN's quality-aware
memory with its temporary memory and prior enhancement.

Independent of the sdk: no ``sdk.policies``, no ``sdk.bank``, no ``sdk.ops`` post-processing;
memory is kept as concatenated tensors, as the authors keep it. Only the torch networks of
``training.authors`` are shared, so a test comparing the sdk with these loops checks the
sdk's pipeline (padding, normalisation, schedule, aggregation, resizing) against the authors'.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def pad16(x: torch.Tensor):
    """Zero-pad the last two axes to multiples of 16, the odd pixel at the bottom/right."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % 16, (-w) % 16
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return F.pad(x, pad), pad


def unpad(x: torch.Tensor, pad) -> torch.Tensor:
    left, right, top, bottom = pad
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


def aggregate(prob: torch.Tensor) -> torch.Tensor:
    """[K,1,H,W] object probabilities → [K+1,1,H,W] with background (STM soft aggregation)."""
    p = torch.cat([torch.prod(1 - prob, 0, keepdim=True), prob], 0).clamp(1e-7, 1 - 1e-7)
    return torch.softmax(torch.log(p / (1 - p)), 0)


def others(masks: torch.Tensor) -> torch.Tensor:
    """[K,1,H,W] → for each object the sum of the other objects' masks."""
    k = masks.shape[0]
    return torch.cat([masks[[j for j in range(k) if j != i]].sum(0, keepdim=True) if k > 1
                      else torch.zeros_like(masks[:1]) for i in range(k)], 0)


def top_k_softmax(affinity: torch.Tensor, k: int) -> torch.Tensor:
    """[B,M,Q] → weights [B,M,Q]: softmax over the k largest of each column, 0 elsewhere."""
    values, idx = torch.topk(affinity, k, dim=1)
    weights = torch.softmax(values, dim=1)
    return torch.zeros_like(affinity).scatter_(1, idx, weights)


class Result:
    """Per-frame label maps (uint8 [H,W]), soft probabilities [K+1,H,W] and the frames in
    memory after each frame (what the next frame reads, the temporary memory included)."""

    def __init__(self):
        self.labels, self.probs, self.memory = [], [], []


class Trace:
    """What a loop computed at each step an export runs as a graph, under the export's graph,
    input and output names and in its layouts (``docs/graph-contract.md``), so that a
    teacher-forced comparison can feed the sdk these tensors and compare its own with them.

    ``steps[t]``: list of (graph, {name: float32 array}) in the order the loop ran them on
    frame t; graph ``"aggregate"`` holds the soft-aggregated probabilities ``prob``
    [K+1,Hp,Wp] (padded), ``"quality"`` the normalised score S̄A_t (``score``, a 0-d array)."""

    def __init__(self):
        self.steps: list[list[tuple[str, dict]]] = []

    def add(self, t: int, graph: str, **tensors) -> None:
        while len(self.steps) <= t:
            self.steps.append([])
        self.steps[t].append((graph, {k: np.array(v.numpy() if torch.is_tensor(v) else v, np.float32)
                                      for k, v in tensors.items()}))

    def outputs(self, t: int, graph: str) -> list[dict]:
        """The tensors of every run of ``graph`` on frame t, in order (empty if none)."""
        return [tensors for name, tensors in (self.steps[t] if t < len(self.steps) else []) if name == graph]


def _record(trace, t, graph, **tensors) -> None:
    if trace is not None:
        trace.add(t, graph, **tensors)


def _nudge(x: torch.Tensor) -> torch.Tensor:
    """x moved by one float32 ulp away from zero, element by element."""
    return torch.nextafter(x, torch.where(x < 0, -torch.inf, torch.inf))


def _prepare(frames, first_mask):
    images = torch.stack([(torch.from_numpy(f).permute(2, 0, 1).float() / 255 - MEAN) / STD for f in frames])
    values = [int(v) for v in np.unique(first_mask) if v]
    onehot = torch.stack([torch.from_numpy((first_mask == v).astype(np.float32)) for v in values])[:, None]
    images, pad = pad16(images)
    onehot, _ = pad16(onehot)
    return images, onehot, pad, np.array([0, *values], np.uint8)


def _finish(result: Result, prob: torch.Tensor, pad, lut) -> None:
    prob = unpad(prob, pad)[:, 0]
    result.probs.append(prob.numpy())
    result.labels.append(lut[prob.argmax(0).numpy()])


@torch.no_grad()
def stcn_loop(net, frames, first_mask, top_k: int = 20, every: int = 5, rde_theta: int | None = None,
              trace: Trace | None = None, ulp: bool = False) -> Result:
    """STCN's every-k memory; with ``rde_theta``, RDE-VOS's ``two-frames-compress``:
    memory [RDE, latest memory frame, first, first], RDE ← SAM(RDE, frame) when t mod θ = 0.
    ``trace`` records every graph-sized step (:class:`Trace`); ``ulp`` moves the first frame's
    memory value by one float32 ulp (the amplification experiment)."""
    images, onehot, pad, lut = _prepare(frames, first_mask)
    out = Result()
    prob = aggregate(onehot)
    _finish(out, prob, pad, lut)
    _record(trace, 0, "aggregate", prob=prob[:, 0])
    key, f16, f8, f4 = net.encode_key(images[:1])
    _record(trace, 0, "key_encoder", image=images[0], key=key, f16=f16, f8=f8, f4=f4)
    masks = torch.cat([prob[1:], others(prob[1:])], 1)
    value = net.encode_value(images[:1], f16, masks)
    value = _nudge(value) if ulp else value
    _record(trace, 0, "value_encoder", masks=masks, value=value)
    keys, vals, frames_in = [key.flatten(2)], [value.flatten(2)], [0]       # [1,C_k,hw], [K,C_v,hw]
    first = (keys[0], vals[0])
    rde = latest = None
    out.memory.append([0])
    for t in range(1, len(frames)):
        key, f16, f8, f4 = net.encode_key(images[t:t + 1])
        _record(trace, t, "key_encoder", image=images[t], key=key, f16=f16, f8=f8, f4=f4)
        if rde_theta is None:
            mk, mv = torch.cat(keys, 2), torch.cat(vals, 2)
        elif rde is None:
            mk, mv = torch.cat([first[0]] * 2, 2), torch.cat([first[1]] * 2, 2)
        else:
            mk = torch.cat([rde[0], latest[0], first[0], first[0]], 2)
            mv = torch.cat([rde[1], latest[1], first[1], first[1]], 2)
        ck = mk.shape[1]
        q = key.flatten(2)
        affinity = (2 * mk.transpose(1, 2) @ q - mk.pow(2).sum(1).unsqueeze(2)) / math.sqrt(ck)   # [1,M,Q]
        weights = top_k_softmax(affinity, min(top_k, mk.shape[2]))
        readout = (mv @ weights).view(mv.shape[0], mv.shape[1], *key.shape[-2:])
        _record(trace, t, "readout", readout=readout)
        logits = net.decode(readout, f16, f8, f4)
        _record(trace, t, "decoder", logits=logits)
        prob = aggregate(torch.sigmoid(logits))
        _record(trace, t, "aggregate", prob=prob[:, 0])
        _finish(out, prob, pad, lut)
        if t % (rde_theta or every) == 0:
            masks = torch.cat([prob[1:], others(prob[1:])], 1)
            value = net.encode_value(images[t:t + 1], f16, masks)
            _record(trace, t, "value_encoder", masks=masks, value=value)
            k_new, v_new = key.flatten(2), value.flatten(2)
            if rde_theta is None:
                keys.append(k_new)
                vals.append(v_new)
                frames_in.append(t)
            else:
                h, w = key.shape[-2:]
                base = first if rde is None else rde
                rde = (net.fold_key(base[0].view(1, -1, h, w), key).flatten(2),
                       net.fold_value(base[1].view(mv.shape[0], -1, h, w), value).flatten(2))
                _record(trace, t, "sam_key", rde=rde[0].view(1, -1, h, w))
                _record(trace, t, "sam_value", rde=rde[1].view(mv.shape[0], -1, h, w))
                latest = (k_new, v_new)
                frames_in = [0, t]
        out.memory.append(sorted(set(frames_in)))
    return out


@torch.no_grad()
def qdmn_loop(net, frames, first_mask, top_k: int = 50, interval: int = 5, sigma: float = 0.8,
              limit: int = 20, trace: Trace | None = None, ulp: bool = False) -> Result:
    """QDMN's ``inference_core.py``: memory keys per object from the mask encoder, every frame
    scored by the QAM, admitted every ≥ ``interval`` frames when S̄A > σ, a memory list of at
    most ``limit`` + 1 entries whose eviction removes the tensor entry at the list position,
    the previous frame read as temporary memory when not admitted, prior enhancement with the
    previous frame's foreground. ``trace`` and ``ulp`` as :func:`stcn_loop` (``ulp``: the first
    frame's memory key and value)."""
    images, onehot, pad, lut = _prepare(frames, first_mask)
    out = Result()
    prob = aggregate(onehot)
    _finish(out, prob, pad, lut)
    _record(trace, 0, "aggregate", prob=prob[:, 0])

    def memorize(t, p):
        masks = torch.cat([p, others(p)], 1)
        key, value, feature = net.encode_value(images[t:t + 1], masks)
        if ulp and t == 0:
            key, value = _nudge(key), _nudge(value)
        score = net.score_from(feature)
        _record(trace, t, "value_encoder", image=images[t], masks=masks, key=key, value=value, qam_feature=feature)
        _record(trace, t, "qam", score=score)
        return key.flatten(2), value.flatten(2), score.numpy().astype(np.float32)

    keys, vals, scores = memorize(0, prob[1:])
    tensor_frames = [0]                                        # which frame each tensor entry holds
    rated = scores[scores != 0]
    first = np.sum(rated) / np.float32(len(rated)) if len(rated) else np.float32(np.nan)
    admitted, sa, index, last = [], {}, 0, 0
    temp = None
    out.memory.append([0])
    for t in range(1, len(frames)):
        f16, f8, f4 = net.encode_key(images[t:t + 1])
        _record(trace, t, "key_encoder", image=images[t], f16=f16, f8=f8, f4=f4)
        prior = prob[1:].max(0, keepdim=True).values                 # previous frame's foreground [1,1,H,W]
        key, f16 = net.enhance(f16, prior)
        _record(trace, t, "prior_enhance", prior=prior, key=key, enhanced_f16=f16)
        n, hw = vals.shape[0], key.shape[-2] * key.shape[-1]
        mk, mv = (keys, vals) if temp is None else (torch.cat([keys, temp[0]], 2), torch.cat([vals, temp[1]], 2))
        q = key.flatten(2)[0] / math.sqrt(mk.shape[1])
        readouts = []
        for i in range(n):
            weights = top_k_softmax((mk[i].transpose(0, 1) @ q)[None], min(top_k, mk.shape[2]))
            readouts.append((mv[i] @ weights[0]).view(1, -1, *key.shape[-2:]))
        _record(trace, t, "readout", readout=torch.cat(readouts, 0))
        logits = net.decode(torch.cat(readouts, 0), f16, f8, f4)
        _record(trace, t, "decoder", logits=logits)
        prob = aggregate(torch.sigmoid(logits))
        _record(trace, t, "aggregate", prob=prob[:, 0])
        _finish(out, prob, pad, lut)
        k_new, v_new, s = memorize(t, prob[1:])
        score = (np.sum(s) / np.float32(len(s))) / first
        _record(trace, t, "quality", score=score)
        if t - last >= interval and score > sigma:
            index += 1
            if len(admitted) > limit:
                reference = [np.exp(-abs(index - m)) + sa[m] for m in admitted]
                pos = int(np.argmin(reference))
                del sa[admitted.pop(pos)]
                keep = [i for i in range(keys.shape[2] // hw) if i != pos]
                keys = torch.cat([keys.view(n, keys.shape[1], -1, hw)[:, :, keep].flatten(2), k_new], 2)
                vals = torch.cat([vals.view(n, vals.shape[1], -1, hw)[:, :, keep].flatten(2), v_new], 2)
                tensor_frames = [f for i, f in enumerate(tensor_frames) if i != pos] + [t]
            else:
                keys, vals = torch.cat([keys, k_new], 2), torch.cat([vals, v_new], 2)
                tensor_frames.append(t)
            admitted.append(index)
            sa[index] = score
            last, temp = t, None
        else:
            temp = (k_new, v_new)
        out.memory.append(sorted(set(tensor_frames) | ({t} if temp is not None else set())))
    return out
