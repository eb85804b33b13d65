"""DMN-AOA's modules (Zhou et al., "Adaptive Object Alignment … Dynamic Memory Network",
``../shared/papers/dmn-aoa-object-dynamic-memory.txt``, §3.1–3.4) on a vosedge core network.

The paper's five modules map onto vosedge as follows (docs/dmn-aoa.md):

* base feature extractor — the core key encoder's f16/f8/f4 (§3.1); object features are ROI
  Align (:mod:`training.roi_align`, ONNX ``RoiAlign`` semantics) of f16 in S×S (S = 8) followed
  by the "bottleneck layer" to C channels (:class:`ObjectFeatures`);
* object proposal generator — the ``proposals`` graph (issue 27 items 1–3; not here);
* object template generator — the dynamic memory network, §3.2: :class:`MemoryEncoder`,
  :class:`QueryEncoder`, :func:`template_decoder` (Eq. 1), with relative-time positional
  embeddings (:class:`TimeEmbedding`);
* aligned matcher — adaptive object alignment, §3.3 (:class:`AlignedMatcher`, Eq. 2–3) and the
  differentiable matching layer of DMM-Net (§3.1; :func:`sinkhorn`) → the coarse mask;
* mask refinement — :class:`RefineNet`, the core decoder with the coarse mask injected through
  zero-initialised convolutions (so a fresh RefineNet *is* the core decoder);
* multi-object soft aggregation (§3.4) is the sdk's (docs/graph-contract.md, "sdk
  post-processing"): every module here runs all N objects in one pass.

:class:`DMNAOA` holds them and has one method per exported graph (``export/dmn_export.py``):
``encode_memory`` (``dmn_memory``), ``template`` (``dmn_template``), ``match``
(``aoa_match``), ``refine`` (``refine``).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .roi_align import roi_align

ROI_SIZE = 8              # S: object feature maps are S×S
CHANNELS = 128            # C: object feature channels; keys have C/4 (§3.2)
PROJ_CHANNELS = 64        # C_D: AOA's shared feature space (§3.3)
ALPHA = 10.0              # α of Eq. 2 at initialisation (learnable)
SINKHORN_ITERS = 10       # fixed iterations of the matching layer
F16_SCALE = 1 / 16        # boxes (internal-input px) → f16 grid
F4_SCALE = 1 / 4          # boxes → the stride-4 grid of masks


class TimeEmbedding(nn.Module):
    """Relative-time positional embedding (§3.2: "positional embeddings [27] … encoded using the
    relative positions (i.e. offsets) of the memory/query frame w.r.t. the first frame").

    time [N] float32 (frame offset of each object's frame from that object's first frame, ≥ 0)
    → [N, C] float32: the sinusoid of Vaswani et al. (2017, §3.5), PE(t)_{2i} = sin(t/10000^{2i/C}),
    PE(t)_{2i+1} = cos(t/10000^{2i/C}), through a learnable linear projection initialised to the
    identity (so it starts as Vaswani's additive embedding). Added to the object features over
    all S×S positions."""

    def __init__(self, channels: int):
        super().__init__()
        if channels % 2:
            raise ValueError(f"the time embedding needs an even channel count, got {channels}")
        self.register_buffer("frequencies", torch.exp(
            -math.log(10000.0) * torch.arange(0, channels, 2, dtype=torch.float32) / channels), persistent=False)
        self.project = nn.Linear(channels, channels)
        with torch.no_grad():
            self.project.weight.copy_(torch.eye(channels))
            self.project.bias.zero_()

    def sinusoid(self, time: torch.Tensor) -> torch.Tensor:
        """time [N] → [N, C], sin/cos interleaved."""
        angle = time[:, None] * self.frequencies[None, :]
        return torch.stack([angle.sin(), angle.cos()], 2).flatten(1)

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        return self.project(self.sinusoid(time))


class ObjectFeatures(nn.Module):
    """Object features (§3.1: "ROI pooling on the base features using the corresponding bounding
    boxes", after a "bottleneck layer"): ROI Align of f16 [1,C16,h,w] in boxes [R,4] (x1, y1,
    x2, y2 float32, padded internal-input px; spatial scale 1/16, S×S, sampling ratio 2,
    half_pixel) → 1×1 conv, ReLU, 3×3 conv to C channels → [R,C,S,S] float32."""

    def __init__(self, f16_channels: int, channels: int = CHANNELS, roi_size: int = ROI_SIZE):
        super().__init__()
        self.roi_size = roi_size
        self.reduce = nn.Conv2d(f16_channels, channels, 1)
        self.mix = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, f16: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        rois = roi_align(f16, boxes, self.roi_size, F16_SCALE)
        return self.mix(F.relu(self.reduce(rois)))


class MemoryEncoder(nn.Module):
    """DMN memory encoder (§3.2, Fig. 3): object features F_m [N,C,S,S] (+ time embedding) ⊕ the
    object mask M_m ROI-aligned to S×S [N,1,S,S] → two parallel 3×3 convs → key [N,C/4,S,S],
    value [N,C,S,S]."""

    def __init__(self, channels: int = CHANNELS):
        super().__init__()
        self.key = nn.Conv2d(channels + 1, channels // 4, 3, 1, 1)
        self.value = nn.Conv2d(channels + 1, channels, 3, 1, 1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([features, mask], 1)
        return self.key(x), self.value(x)


class QueryEncoder(nn.Module):
    """DMN query encoder (§3.2): the current frame's object features in the previous frame's
    box F_c [N,C,S,S] (+ time embedding) → one 3×3 conv → Q [N,C/4,S,S]."""

    def __init__(self, channels: int = CHANNELS):
        super().__init__()
        self.query = nn.Conv2d(channels, channels // 4, 3, 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.query(features)


def template_decoder(query: torch.Tensor, memory_keys: torch.Tensor, memory_values: torch.Tensor,
                     valid: torch.Tensor) -> torch.Tensor:
    """DMN template decoder, Eq. 1: T = softmax(Q ∘ K / √(C/4)) ∘ V (scaled dot-product
    attention; 4-D tensors flattened to matrices, §3.2).

    query Q [N,C/4,S,S], memory_keys K [N,C/4,M], memory_values V [N,C,M], valid [N,M] float32
    (1 = a position of a filled slot written while the object existed, 0 = masked: it gets
    −1e30 before the softmax over M) → template T [N,C,S,S] float32. Each object needs at least
    one valid position (the sdk writes the object's first frame)."""
    n, ck, s, _ = query.shape
    q = query.flatten(2).transpose(1, 2)                                   # [N,SS,C/4]
    affinity = (q @ memory_keys) / math.sqrt(ck) - (1 - valid[:, None, :]) * 1e30   # [N,SS,M]
    weights = torch.softmax(affinity, dim=2)
    return (memory_values @ weights.transpose(1, 2)).reshape(n, memory_values.shape[1], s, s)


def _projector(cin: int, cout: int) -> nn.Sequential:
    """AOA projector (§3.3): 3×3 conv, ReLU, 3×3 conv."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1))


def _normalise(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x / x.pow(2).sum(dim, keepdim=True).add(1e-12).sqrt()


def aoa_similarity(t_proj: torch.Tensor, p_proj: torch.Tensor, alpha: torch.Tensor | float,
                   align: bool = True) -> torch.Tensor:
    """Template–proposal similarity through adaptive object alignment (§3.3).

    t_proj T′ [N,C_D,S,S], p_proj P′ [P,C_D,S,S] float32 → similarity [N,P] in [−1, 1]:

    * Eq. 2: S_{i,j} = softmax_j(α · cos(T′_i, P′_j)) over the proposal's positions j, for each
      template position i (per template–proposal pair);
    * Eq. 3: P″_i = Σ_j S_{i,j} · P′_j (the proposal translated to look like the template);
    * the match score is the cosine similarity of the flattened T′ and P″ (§3.1, "distances …
      computed by the cosine similarities", between the aligned proposal and the template).

    ``align`` False is the paper's "without AOA" ablation: the cosine similarity of the
    flattened T′ and P′ (raw proposal features, position by position)."""
    t = t_proj.flatten(2)                                                  # [N,D,SS]
    p = p_proj.flatten(2)                                                  # [P,D,SS]
    if align:
        cos = torch.einsum("ndi,pdj->npij", _normalise(t, 1), _normalise(p, 1))   # [N,P,SS,SS]
        weights = torch.softmax(alpha * cos, dim=3)
        aligned = torch.einsum("npij,pdj->npdi", weights, p)                     # P″ [N,P,D,SS]
    else:
        aligned = p[None].expand(t.shape[0], -1, -1, -1)
    return (_normalise(t.flatten(1), 1)[:, None, :] * _normalise(aligned.flatten(2), 2)).sum(2)


def sinkhorn(scores: torch.Tensor, dustbin: torch.Tensor, iterations: int = SINKHORN_ITERS) -> torch.Tensor:
    """Differentiable matching layer (DMN-AOA §3.1 uses DMM-Net's, Zeng et al. ICCV 2019; vosedge
    relaxes the assignment with Sinkhorn normalisation, Sinkhorn & Knopp 1967, Cuturi 2013, in the
    log domain with a dustbin row and column as in SuperGlue, Sarlin et al. CVPR 2020).

    scores [N,P] float32 (objects × proposals; P ≥ 1), dustbin [] float32 (the score of "no
    match") → assignment A [N,P] in [0, 1]. The [N+1,P+1] score matrix (dustbin row and column)
    is normalised towards row sums [1]·N ⊕ [P] and column sums [1]·P ⊕ [N] by ``iterations``
    alternate row/column log-normalisations ending with the columns (so every proposal column,
    dustbin included, sums to 1 exactly; object rows, dustbin included, converge to 1). A is the
    real block: each object takes at most one unit of proposal mass, the rest goes to its
    dustbin."""
    n_obj = torch.ones_like(scores[:, :1]).sum(0)                          # [1] = N, shape-independent in ONNX
    n_prop = torch.ones_like(scores[:1]).sum(1)                            # [1] = P
    z = torch.cat([torch.cat([scores, dustbin.expand_as(scores[:, :1])], 1),
                   dustbin.expand_as(torch.cat([scores[:1], scores[:1, :1]], 1))], 0)   # [N+1,P+1]
    log_rows = torch.cat([torch.zeros_like(scores[:, 0]), n_prop.log()])   # [N+1]
    log_cols = torch.cat([torch.zeros_like(scores[0]), n_obj.log()])       # [P+1]
    u = torch.zeros_like(log_rows)
    v = torch.zeros_like(log_cols)
    for _ in range(iterations):
        u = log_rows - torch.logsumexp(z + v[None, :], dim=1)
        v = log_cols - torch.logsumexp(z + u[:, None], dim=0)
    return (z + u[:, None] + v[None, :]).exp()[:-1, :-1]


class AlignedMatcher(nn.Module):
    """Aligned matcher (§3.1 "Aligned Matcher", §3.3 AOA, Fig. 4): template T [N,C,S,S] and
    proposal features P [P,C,S,S] → two parallel projectors (3×3 conv, ReLU, 3×3 conv to C_D) →
    :func:`aoa_similarity` (Eq. 2–3, α learnable) → :func:`sinkhorn` on β·similarity (β
    learnable, initialised to α; a learnable dustbin score, initialised to 0) → assignment A
    [N,P]; the coarse mask is A · proposal masks."""

    def __init__(self, channels: int = CHANNELS, proj_channels: int = PROJ_CHANNELS, alpha: float = ALPHA,
                 iterations: int = SINKHORN_ITERS, align: bool = True):
        super().__init__()
        self.project_template = _projector(channels, proj_channels)
        self.project_proposal = _projector(channels, proj_channels)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.beta = nn.Parameter(torch.tensor(float(alpha)))
        self.dustbin = nn.Parameter(torch.tensor(0.0))
        self.iterations, self.align = iterations, align

    def forward(self, template: torch.Tensor, proposals: torch.Tensor, masks: torch.Tensor):
        """template [N,C,S,S], proposals [P,C,S,S], masks [P,H4,W4] (full-frame proposal
        probabilities on the stride-4 grid) → assignment [N,P], similarity [N,P], coarse
        [N,1,H4,W4] = Σ_p A[n,p]·masks[p]."""
        similarity = aoa_similarity(self.project_template(template), self.project_proposal(proposals),
                                    self.alpha, self.align)
        assignment = sinkhorn(self.beta * similarity, self.dustbin, self.iterations)
        coarse = (assignment @ masks.flatten(1)).reshape(assignment.shape[0], 1, masks.shape[1], masks.shape[2])
        return assignment, similarity, coarse


class RefineNet(nn.Module):
    """Mask refinement network (§3.1 "RefineNet"): the core decoder (same architecture and, at
    construction, a copy of its weights) with the coarse mask injected at each stage through
    zero-initialised 3×3 convs: at stride 16 (coarse 4×4-average-pooled) after the decoder's
    compression block, at stride 8 (2×2-pooled) after its 16→8 block and at stride 4 after its
    8→4 block. The paper's reference-frame features aligned to the current frame are played by
    the core readout over the pixel memory of the first/previous/every-k frames (docs/dmn-aoa.md).

    readout [N,C_v,h,w], coarse [N,1,4h,4w] (0..1), f16/f8/f4 of the query [1,…] → logits
    [N,1,16h,16w] exactly as the ``decoder`` graph; with the injections at zero (initialisation)
    the output equals the decoder's."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = copy.deepcopy(decoder)
        widths = (self.decoder.compress.conv2.out_channels, self.decoder.up_16_8.skip_conv.out_channels,
                  self.decoder.up_8_4.skip_conv.out_channels)
        self.inject = nn.ModuleList([nn.Conv2d(1, c, 3, 1, 1) for c in widths])
        for conv in self.inject:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, readout, coarse, f16, f8, f4):
        d, n = self.decoder, readout.shape[0]
        x = d.compress(torch.cat([readout, f16.expand(n, -1, -1, -1)], 1)) + self.inject[0](F.avg_pool2d(coarse, 4))
        x = d.up_16_8(f8.expand(n, -1, -1, -1), x) + self.inject[1](F.avg_pool2d(coarse, 2))
        x = d.up_8_4(f4.expand(n, -1, -1, -1), x) + self.inject[2](coarse)
        x = d.pred(F.relu(x))
        return F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False)


class DMNAOA(nn.Module):
    """DMN-AOA's trainable modules on a core :class:`~training.networks.VOSNetwork` ``net``
    (its f16 channel count and its decoder; the core network itself is not held).

    Hyper-parameters (recorded in the manifest's ``dmn``): ``roi_size`` S, ``channels`` C (keys
    C/4), ``proj_channels`` C_D, ``alpha`` (initial α and β), ``sinkhorn_iters``, ``align``
    (False: the "without AOA" ablation)."""

    def __init__(self, net: nn.Module, roi_size: int = ROI_SIZE, channels: int = CHANNELS,
                 proj_channels: int = PROJ_CHANNELS, alpha: float = ALPHA, sinkhorn_iters: int = SINKHORN_ITERS,
                 align: bool = True):
        super().__init__()
        if channels % 8:
            raise ValueError(f"channels must be a multiple of 8 (keys have C/4, the time embedding "
                             f"needs an even count), got {channels}")
        f16_channels = net.config["skip_channels"]["f16"]
        self.hparams = {"roi_size": roi_size, "channels": channels, "key_channels": channels // 4,
                        "proj_channels": proj_channels, "alpha": float(alpha), "sinkhorn_iters": sinkhorn_iters,
                        "align": bool(align)}
        self.objects = ObjectFeatures(f16_channels, channels, roi_size)
        self.time = TimeEmbedding(channels)
        self.memory_encoder = MemoryEncoder(channels)
        self.query_encoder = QueryEncoder(channels)
        self.matcher = AlignedMatcher(channels, proj_channels, alpha, sinkhorn_iters, align)
        self.refiner = RefineNet(net.decoder)

    def object_features(self, f16, boxes, time):
        """Object features + time embedding (§3.1, §3.2): [N,C,S,S]."""
        return self.objects(f16, boxes) + self.time(time)[:, :, None, None]

    # -- the exported graphs ------------------------------------------------------------
    def encode_memory(self, f16, boxes, masks, time):
        """Graph ``dmn_memory`` (§3.2 memory encoder): f16 [1,C16,h,w], boxes [N,4] (x1, y1, x2,
        y2 padded internal-input px), masks [N,1,4h,4w] (object probabilities, stride-4 grid),
        time [N] (frame offset from the object's first frame) → key [N,C/4,S,S], value
        [N,C,S,S]."""
        mask = _roi_per_object(masks, boxes, self.objects.roi_size)
        return self.memory_encoder(self.object_features(f16, boxes, time), mask)

    def template(self, f16, boxes, time, memory_keys, memory_values, valid):
        """Graph ``dmn_template`` (§3.2 query encoder + Eq. 1): f16, boxes [N,4] (each object's
        box in the previous frame), time [N], memory_keys [N,C/4,M], memory_values [N,C,M],
        valid [N,M] → template [N,C,S,S]."""
        query = self.query_encoder(self.object_features(f16, boxes, time))
        return template_decoder(query, memory_keys, memory_values, valid)

    def match(self, template, f16, proposal_boxes, proposal_masks):
        """Graph ``aoa_match`` (§3.1 aligned matcher, §3.3 Eq. 2–3, matching layer): template
        [N,C,S,S], f16, proposal_boxes [P,4] (P ≥ 1), proposal_masks [P,4h,4w] → assignment
        [N,P], similarity [N,P], coarse [N,1,4h,4w]."""
        return self.matcher(template, self.objects(f16, proposal_boxes), proposal_masks)

    def refine(self, readout, coarse, f16, f8, f4):
        """Graph ``refine`` (§3.1 RefineNet): see :class:`RefineNet`."""
        return self.refiner(readout, coarse, f16, f8, f4)


def _roi_per_object(masks: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each object's mask [N,1,H4,W4] ROI-aligned in its own box [N,4] (spatial scale 1/4) →
    [N,1,S,S]: one RoiAlign of the N boxes over the N masks as channels of one image, then each
    box's own mask channel (the diagonal, a one-hot built from ``arange`` so that N stays a
    dynamic axis of the exported graph)."""
    rois = roi_align(masks.transpose(0, 1), boxes, size, F4_SCALE)        # [N(box), N(mask), S, S]
    idx = torch.arange(rois.shape[0], device=rois.device)
    eye = (idx[:, None] == idx[None, :]).to(rois.dtype)
    return (rois * eye[:, :, None, None]).sum(1, keepdim=True)
