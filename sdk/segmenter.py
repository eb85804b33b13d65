"""Frame-by-frame semi-supervised VOS on the exported graphs (STCN inference loop)."""
from __future__ import annotations

from pathlib import Path
from time import perf_counter

import numpy as np

from .bank import MemoryBank
from .errors import InputError, ManifestError
from .manifest import GRAPH_NAMES, Manifest, resolve_model
from .ops import Geometry, Workspace, channel_argmax, merge_given, sigmoid, soft_aggregate
from .policies import MemoryPolicy, Write, make_policy
from .runtime import Graphs

# Segmenter.timings keys (ms). preprocess: checks, resize, normalise, pad; key_encoder: + the
# prior_enhance graph (QDMN/QPM); postprocess: mask merge, soft aggregation, crop, resize, argmax;
# qam: the QAM score graph; sam: the SAM graphs + RDE write; bookkeeping: the rest of the sdk's
# work (sigmoid, objects, prior, policy, value-encoder masks, bank write).
STAGES = ("preprocess", "key_encoder", "readout", "decoder", "postprocess", "value_encoder", "qam", "sam",
          "bookkeeping")


class Segmenter:
    """Streams a video through the exported STCN-family graphs with a bounded or unbounded
    memory bank (Cheng et al., "Rethinking Space-Time Networks with Improved Memory Coverage",
    NeurIPS 2021).

    Args:
        model: export folder (``manifest.json`` + graphs); None = the bundled default export
            ``sdk/models/default`` (raises :class:`~sdk.errors.ManifestError` if missing).
        method: memory policy (:data:`~sdk.policies.POLICIES`: ``"every_k"``,
            ``"first_latest"``, ``"qdmn"``, ``"lfu"``, ``"qpm"``, ``"rde"``); None = the
            manifest's ``method``. Unknown → :class:`~sdk.errors.InputError` listing the known
            ones. A policy whose graphs (``policy.requires``: ``qam``, ``sam_key``,
            ``sam_value``) the export lacks → :class:`~sdk.errors.ManifestError` naming them.
        providers: onnxruntime execution providers; None = CUDA if it starts, else CPU (one
            ``logging`` warning on logger ``"vosedge"`` when CUDA is dropped). Short names
            ``"cuda"``, ``"cpu"`` accepted.
        resolution: internal short side in px: ``"manifest"`` = the manifest's, an int, or None
            = native frame size. Frames are resized (aspect kept), then zero-padded to
            multiples of the manifest ``stride`` (bottom/right, or on both sides when the
            manifest's ``inference.padding`` is ``"centre"``); outputs are at input size.
        top_k: top-k of the readout softmax; None = the policy's (RDE: 40), else the
            manifest's ``top_k``.
        threads: CPU threads per graph (onnxruntime intra-op); None = one per physical core.
            Sessions never spin-wait (:func:`sdk.runtime.session_options`).
        temporary_memory: read the previous frame as a temporary memory when the policy did not
            write it (QDMN's inference; STCN's ``include_last``); None = the manifest's
            ``inference.temporary_memory`` for frame-slot policies (LFU keeps features: off).
            True with LFU → :class:`~sdk.errors.InputError`.
        **policy_params: override the manifest's ``policy_defaults[method]``, e.g. ``k=5``,
            ``max_frames=20`` for every_k; ``quality_gate=σ`` (any policy) writes only frames
            whose normalised QAM score is ≥ σ.

    Per frame (:meth:`step`): key encoder → readout over the memory bank → decoder →
    sigmoid → soft aggregation (STM/STCN) → crop padding, bilinear resize to input size →
    argmax. When the policy writes the frame, the value encoder encodes (image, f16,
    masks [N,2,H,W] = (own probability, sum of the other objects' probabilities)) and the
    bank stores key and value where the policy chose (a slot, feature positions, or an RDE
    fold through the ``sam_key``/``sam_value`` graphs). Policies that need QAM scores get
    ``qam(value)`` → score [N] of the frame's prediction. Policies that require
    ``prior_enhance`` (QDMN, QPM) pass the key encoder's f16 and a prior mask [1,1,H,W] through
    that graph, which returns the enhanced f16 and its key (QDMN Eq. 5, QPM Eq. 4); the prior
    is the foreground probability (max over objects) of the frame ``policy.prior(t)`` picks
    (t − 1 or 0); the first frame gets its own annotation. An export whose manifest says
    ``inference.prior_enhance = "always"`` (QDMN) runs it on every frame, whatever the policy.

    Exports of the authors' networks (manifest version 2, ``docs/graph-contract.md``) may also
    ask for memory keys per object (``inference.memory_keys = "per_object"``: the value encoder
    returns ``key`` [N,C_k,h,w] beside ``value``, the bank and the readout keep one key per
    object) and QAM scores from another value-encoder output than ``value`` (the ``qam``
    graph's input names say which).
    """

    def __init__(self, model: str | Path | None = None, method: str | None = None, providers=None,
                 resolution: int | str | None = "manifest", top_k: int | None = None,
                 threads: int | None = None, temporary_memory: bool | None = None, **policy_params):
        self.manifest: Manifest = resolve_model(model)
        m = self.manifest
        self.method = method or m.method
        self._policy_params = {**m.policy_defaults.get(self.method, {}), **policy_params}
        policy = make_policy(self.method, **self._policy_params)  # fail early on a bad method/param
        missing = [name for name in policy.requires if name not in m.graphs]
        if missing:
            raise ManifestError(f"memory policy {self.method!r} needs graph(s) {', '.join(missing)}, which "
                                f"the export {m.root} lacks: use a model exported with those heads "
                                f"(vos-export --method {self.method})")
        if resolution == "manifest":
            resolution = m.resolution
        if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int)
                                       or resolution < 1):
            raise InputError(f"resolution must be 'manifest', a positive int short side or None, got {resolution!r}")
        self.resolution = resolution
        self.top_k = (policy.top_k or m.top_k) if top_k is None else int(top_k)
        if self.top_k < 1:
            raise InputError(f"top_k must be ≥ 1, got {top_k}")
        inference = m.inference
        always = ("prior_enhance",) if inference["prior_enhance"] == "always" else ()
        missing = [name for name in always if name not in m.graphs]
        if missing:
            raise ManifestError(f"the export {m.root} says prior enhancement runs on every frame, but it has no "
                                "prior_enhance graph: re-export the model")
        if temporary_memory is None:                 # the manifest's, where the policy keeps frame slots
            temporary_memory = inference["temporary_memory"] and not policy.per_feature
        elif temporary_memory and policy.per_feature:
            raise InputError(f"temporary_memory works with frame-slot policies; {self.method!r} keeps features")
        self.temporary_memory = bool(temporary_memory)
        self._object_keys = inference["memory_keys"] == "per_object"
        if self._object_keys and {"sam_key", "sam_value"} & set(policy.requires):
            raise ManifestError(f"memory policy {self.method!r} folds keys with SAM, which this export's "
                                "per-object keys do not support")
        self._graphs = Graphs(m, providers, tuple(dict.fromkeys(GRAPH_NAMES + policy.requires + always)),
                              threads=threads)
        self._prior_input = "prior_enhance" in policy.requires or bool(always)
        self._mean = np.asarray(m.mean, np.float32)
        self._std = np.asarray(m.std, np.float32)
        self.timings: dict[str, float] = {}
        self.reset()

    # -- state -----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the video: empty memory, no objects, next :meth:`step` is a first frame."""
        self.policy: MemoryPolicy = make_policy(self.method, **self._policy_params)
        self.bank = MemoryBank(self.manifest.key_channels, self.manifest.value_channels,
                               growable=self.policy.growable, object_keys=self._object_keys,
                               temporary=self.temporary_memory)
        self._labels: list[int] = []                 # object index → label value
        self._lut = np.zeros(1, np.uint8)            # argmax channel → label value
        self._geometry: Geometry | None = None
        self._first_prior = self._prev_prior = None  # [1,1,Hp,Wp] float32 (prior enhancement)
        self._work = Workspace()                     # per-frame arrays, reused (ops.Workspace)
        self._t = 0

    @property
    def objects(self) -> tuple[int, ...]:
        """Label values of the objects known so far, in the order they were introduced."""
        return tuple(self._labels)

    @property
    def providers(self) -> list[str]:
        """Execution providers the sessions actually run on (e.g. ``["CPUExecutionProvider"]``)."""
        return self._graphs.providers

    @property
    def bank_bytes(self) -> int:
        """Bytes of the memory bank's preallocated arrays (0 before the first frame)."""
        return self.bank.bank_bytes

    @property
    def geometry(self) -> Geometry | None:
        """Input → resized → padded sizes of the current video (None before its first frame)."""
        return self._geometry

    @property
    def frame_index(self) -> int:
        """Index the next :meth:`step` gives its frame (0 = first frame of the video)."""
        return self._t

    # -- inference -------------------------------------------------------------------------
    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Segment one frame; returns the label map uint8 [H,W] (0 = background).

        frame: RGB uint8 [H,W,3], same size for the whole video.
        mask: optional integer label map [H,W] (0 = background, labels 1..max_objects, not
            necessarily contiguous). Required and non-empty on the first frame; later it may
            introduce new objects or re-state known ones. The objects in it are taken as given
            (they are the output there; predictions of the other known objects are merged in as
            XMem does) and the frame is written to memory. An all-zero mask after the first
            frame gives nothing and counts as no mask.

        :attr:`timings` then holds this frame's per-stage wall times in ms (:data:`STAGES`,
        0 for stages that did not run, plus ``total``).

        Raises :class:`~sdk.errors.InputError` if the frame is not uint8 [H,W,3], its size
        differs from the first frame's, the mask is not an integer [H,W] map of the frame's
        size, has negative labels or labels above the model's ``max_objects``, or the first
        frame has no mask or an empty one.
        """
        t0 = perf_counter()
        ms = dict.fromkeys(STAGES, 0.0)
        frame = self._check_frame(frame)
        mask, given = self._check_mask(mask, frame.shape[:2])
        if self._geometry is None:
            if mask is None:
                raise InputError("the first frame needs a mask: step(frame, mask) with a label map "
                                 "holding at least one object (labels 1..max_objects)")
            self._geometry = Geometry.for_frame(frame.shape[0], frame.shape[1], self.resolution,
                                                self.manifest.stride, self.manifest.inference["padding"])
        geo, t = self._geometry, self._t
        image = geo.image(frame, self._mean, self._std, self._work)
        given_map = None if mask is None else geo.label_map(mask)
        t1 = perf_counter()
        ms["preprocess"] = (t1 - t0) * 1e3

        query = self._graphs.run_named("key_encoder", {"image": image})
        key, f16, f8, f4 = query.get("key"), query["f16"], query["f8"], query["f4"]
        if self._prior_input:
            key, f16 = self._graphs.run("prior_enhance", {"f16": f16, "prior": self._prior(t, given_map)})
        t2 = perf_counter()
        ms["key_encoder"] = (t2 - t1) * 1e3

        prob = None
        if self.bank.num_valid and any(label not in given for label in self._labels):
            prob = self._predict(t, key, f16, f8, f4, ms)

        new = [label for label in given if label not in self._labels]
        if new:
            self._labels += new
            self._lut = np.array([0, *self._labels], np.uint8)
            if self.bank.capacity:
                self.bank.add_objects(len(new))
        if not self.bank.capacity:
            hw = int(np.prod(geo.feature_size))
            self.bank.allocate(self.policy.capacity(), hw, len(self._labels))
        given_idx = [self._labels.index(label) for label in given]
        t4 = perf_counter()

        probs = prob if mask is None else merge_given(prob, given_map, given_idx, given, len(self._labels))
        agg = soft_aggregate(probs, self._work)                       # [N+1,Hp,Wp]
        full = geo.to_input(agg, self._work)                          # [N+1,H,W]
        if mask is None:
            out = self._lut[channel_argmax(full, self._work)]         # a fresh array: the caller's
        else:
            rest = [c for c in range(len(full)) if c - 1 not in given_idx]   # bg + objects not given
            out = np.where(mask > 0, mask, self._lut[rest][channel_argmax(full[rest], self._work)])
        t5 = perf_counter()
        ms["postprocess"] = (t5 - t4) * 1e3

        if self._prior_input:
            self._prev_prior = agg[1:].max(0)[None, None]
        encoded = scores = None
        if self.temporary_memory and t > 0:
            encoded = self._encode_value(image, f16, agg, ms)       # written somewhere either way
        if "qam" in self.policy.requires and self.policy.needs_score(t, mask is not None):
            encoded = encoded or self._encode_value(image, f16, agg, ms)
            t6 = perf_counter()
            (scores,) = self._graphs.run_named("qam", encoded).values()
            ms["qam"] = (perf_counter() - t6) * 1e3
        table = self.bank.positions if self.policy.per_feature else self.bank.frames
        decision = self.policy.on_frame(t, table, mask is not None, scores)
        temporary = decision is None and self.temporary_memory and t > 0
        if decision is not None or temporary:
            encoded = encoded or self._encode_value(image, f16, agg, ms)
            t7 = perf_counter()
            value = encoded["value"]
            memory_key = encoded["key"] if self._object_keys else key[0]
            memory_key = memory_key.reshape(*memory_key.shape[:-2], -1)
            value = value.reshape(*value.shape[:2], -1)
            if decision is None:
                self.bank.write_temporary(memory_key, value, t)
            else:
                self.bank.clear_temporary()
                self.bank.apply(decision, memory_key, value, t, self._sam)
            if isinstance(decision, Write) and decision.fold is not None:
                ms["sam"] = (perf_counter() - t7) * 1e3
        self._t += 1
        total = (perf_counter() - t0) * 1e3
        ms["bookkeeping"] = max(0.0, total - sum(ms.values()))
        ms["total"] = total
        self.timings = ms
        return out

    def _prior(self, t: int, given_map: np.ndarray | None) -> np.ndarray:
        """Prior mask [1,1,Hp,Wp] float32 of frame t: the first frame's annotation (foreground
        of its label map) at t = 0, then that of the frame ``policy.prior(t)`` picks."""
        if t == 0:
            self._first_prior = (given_map > 0).astype(np.float32)[None, None]
            return self._first_prior
        return self._first_prior if self.policy.prior(t) == 0 else self._prev_prior

    def _encode_value(self, image, f16, agg, ms) -> dict[str, np.ndarray]:
        """Value encoder on the soft-aggregated prediction agg [N+1,Hp,Wp] → its outputs:
        ``value`` [N,C_v,h,w] (+ ``key`` [N,C_k,h,w] with per-object keys, + what the QAM reads)."""
        own = agg[1:]
        masks = self._work.array("value_masks", (len(own), 2, *own.shape[1:]))   # [N,2,Hp,Wp]
        masks[:, 0] = own
        total = np.sum(own, axis=0, out=self._work.array("value_total", own.shape[1:]))
        np.subtract(total, own, out=masks[:, 1])                      # the other objects
        t0 = perf_counter()
        out = self._graphs.run_named("value_encoder", {"image": image, "f16": f16, "masks": masks})
        ms["value_encoder"] = (perf_counter() - t0) * 1e3
        return out

    def _sam(self, key_rde, value_rde, key, value) -> tuple[np.ndarray, np.ndarray]:
        """SAM (RDE-VOS Eq. 4–6): (previous RDE key [C_k,hw], value [N,C_v,hw], new memory
        frame's key, value) → new RDE (key [C_k,hw], value [N,C_v,hw]) via ``sam_key`` and
        ``sam_value``."""
        h, w = self._geometry.feature_size
        n = len(value)
        (new_key,) = self._graphs.run("sam_key", {"previous": key_rde.reshape(1, -1, h, w),
                                                  "new": key.reshape(1, -1, h, w)})
        (new_value,) = self._graphs.run("sam_value", {"previous": value_rde.reshape(n, -1, h, w),
                                                      "new": value.reshape(n, -1, h, w)})
        return new_key.reshape(new_key.shape[1], -1), new_value.reshape(*new_value.shape[:2], -1)

    def _predict(self, t, key, f16, f8, f4, ms) -> np.ndarray:
        """Readout over the bank's live positions (RDE-VOS Eq. 2–3) + decoder → per-object
        foreground probability [N_mem,Hp,Wp] float32 for the N_mem objects the bank holds."""
        t0 = perf_counter()
        bank = self.bank
        readout, usage = self._graphs.run("readout", {
            "query_key": key, "memory_keys": bank.readout_keys, "memory_values": bank.values,
            "valid": bank.valid, "top_k": np.array(min(self.top_k, bank.num_valid), np.int64)})
        t1 = perf_counter()
        self.policy.on_readout(t, bank.policy_usage(usage))
        t2 = perf_counter()
        (logits,) = self._graphs.run("decoder", {"readout": readout, "f16": f16, "f8": f8, "f4": f4})
        t3 = perf_counter()
        ms["readout"], ms["decoder"] = (t1 - t0) * 1e3, (t3 - t2) * 1e3
        return sigmoid(logits[:, 0], out=logits[:, 0])

    # -- input checks ----------------------------------------------------------------------
    def _check_frame(self, frame) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
            raise InputError(f"frame must be RGB uint8 [H,W,3], got {frame.dtype} {list(frame.shape)}")
        geo = self._geometry
        if geo is not None and frame.shape[:2] != (geo.height, geo.width):
            raise InputError(f"frame size changed from {geo.height}x{geo.width} to "
                             f"{frame.shape[0]}x{frame.shape[1]} mid-video; call reset() to start a new video")
        return frame

    def _check_mask(self, mask, size) -> tuple[np.ndarray | None, list[int]]:
        """→ (uint8 label map or None, sorted labels present)."""
        if mask is None:
            return None, []
        mask = np.asarray(mask)
        if mask.dtype.kind not in "biu" or mask.shape != size:
            raise InputError(f"mask must be an integer label map of the frame's size {list(size)}, "
                             f"got {mask.dtype} {list(mask.shape)}")
        lo, hi = int(mask.min()), int(mask.max())
        if lo < 0:
            raise InputError(f"mask has negative label {lo}; labels are 0 (background) or 1..max_objects")
        limit = self.manifest.max_objects
        if hi > limit:
            raise InputError(f"mask label {hi} exceeds this model's limit of max_objects = {limit}")
        mask = mask.astype(np.uint8, copy=False)
        labels = [int(v) for v in np.flatnonzero(np.bincount(mask.ravel(), minlength=limit + 1)[1:]) + 1]
        if not labels:
            if self._geometry is None:
                raise InputError("the first frame's mask is empty (all background); it must hold at "
                                 "least one object (labels 1..max_objects)")
            return None, []
        return mask, labels
