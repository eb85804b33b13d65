"""Frame-by-frame semi-supervised VOS on the exported graphs (STCN inference loop)."""
from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from time import perf_counter

import numpy as np

from . import dmn_aoa
from .bank import MemoryBank
from .errors import GraphRunError, InputError, ManifestError, ParameterError
from .io import VOID  # label 255 of DAVIS masks: void, "no label here"
from .manifest import GRAPH_NAMES, Manifest, resolve_model
from .object_bank import check_policy
from .ops import Geometry, Workspace, channel_argmax, label_values, merge_given, sigmoid, soft_aggregate
from .params import refuse, segmenter_option
from .params import resolution as check_resolution
from .policies import MemoryPolicy, make_policy
from .prior import Priors
from .proposal_graph import ProposalGenerator
from .runtime import Graphs
from .soft_output import SoftOutput, soft_output

# floats the readout graph gathers per potentiation call (XMem consolidation; 64 MiB of float32)
POTENTIATION_FLOATS = 1 << 24

# Segmenter.timings keys (ms; they add up to "total", the wall time of step). Graph stages: time
# inside onnxruntime's InferenceSession.run (sdk.runtime.Graphs.run_ms), nothing of the sdk's:
# key_encoder (+ the prior_enhance graph: QDMN/QPM), readout (+ XMem's potentiation through it),
# decoder, value_encoder, qam, sam (sam_key + sam_value). The sdk's own work: preprocess (frame and
# mask checks, policy/bank snapshot, resize, normalise, pad), postprocess (sigmoid, mask merge, soft
# aggregation, crop, resize, argmax, labels) and bookkeeping (everything else: feeds, finite checks
# of graph outputs, objects, policy, value-encoder masks, bank writes, prior).
# DMN-AOA's stages (method "dmn_aoa", sdk.dmn_aoa; 0 for the other methods): proposals (the
# proposals callable), dmn (dmn_template + dmn_memory), aoa (aoa_match), refine (refine, instead of decoder)
STAGES = ("preprocess", "key_encoder", "readout", "decoder", "postprocess", "value_encoder", "qam", "sam",
          *dmn_aoa.STAGES, "bookkeeping")
GRAPH_STAGES = {"key_encoder": "key_encoder", "prior_enhance": "key_encoder", "readout": "readout",
                "decoder": "decoder", "value_encoder": "value_encoder", "qam": "qam", "sam_key": "sam",
                "sam_value": "sam", **dmn_aoa.GRAPH_STAGES}   # graph → the stage its session time counts in
SDK_STAGES = ("preprocess", "postprocess", "bookkeeping")



class Segmenter:
    """Streams a video through the exported STCN-family graphs with a bounded or unbounded
    memory bank (Cheng et al., "Rethinking Space-Time Networks with Improved Memory Coverage",
    NeurIPS 2021).

    Args:
        model: export folder (``manifest.json`` + graphs); None = the bundled default export
            ``sdk/models/default`` (raises :class:`~sdk.errors.ManifestError` if missing).
        method: memory policy, a str (:data:`~sdk.policies.POLICIES`: ``"every_k"``,
            ``"first_latest"``, ``"qdmn"``, ``"lfu"``, ``"qpm"``, ``"rde"``, ``"xmem"``,
            ``"sam2_window"``) or ``"dmn_aoa"`` (DMN-AOA's object-level memory, alignment and
            RefineNet, :mod:`sdk.dmn_aoa`; needs the export's DMN graphs); None = the
            manifest's ``method``. Unknown or not a str → :class:`~sdk.errors.ParameterError`
            listing the known ones. A policy whose graphs (``policy.requires``: ``qam``,
            ``sam_key``, ``sam_value``) the export lacks → :class:`~sdk.errors.ManifestError`
            naming them.
        providers: onnxruntime execution providers; None = CUDA if it starts, else CPU (one
            INFO record on logger ``"vosedge"`` when CUDA is not available: nothing was asked
            for). A provider asked for by name that cannot start is dropped with one WARNING
            there. Short names ``"cuda"``, ``"cpu"`` accepted.
        resolution: internal short side in px: ``"manifest"`` = the manifest's, an int ≥
            :data:`~sdk.params.MIN_FEATURE_ROWS` × the manifest's ``stride`` (64 px for the
            bundled model, stride 16: with fewer than 4 rows of key features it loses the
            object — measured IoU 0.00–0.16 at 16–48 px, 0.53–0.63 at 64, 0.91 at 240 px), or
            None = native frame size. Frames are resized (aspect kept), then zero-padded to
            multiples of the manifest ``stride`` (bottom/right, or on both sides when the
            manifest's ``inference.padding`` is ``"centre"``); outputs are at input size.
        top_k: top-k of the readout softmax, an int ≥ 1 (clipped to the positions in memory);
            None = the policy's (RDE: 40), else the manifest's ``top_k``.
        threads: CPU threads per graph (onnxruntime intra-op), an int ≥ 1; None = one per
            physical core. Sessions never spin-wait (:func:`sdk.runtime.session_options`).
        temporary_memory: bool; read the previous frame as a temporary memory when the policy
            did not write it (QDMN's inference; STCN's ``include_last``); None = the manifest's
            ``inference.temporary_memory`` for frame-slot policies (LFU keeps features: off).
            True with LFU → :class:`~sdk.errors.ParameterError`.
        memory: ``dmn_aoa`` only: the frame-slot policy that schedules its pixel and object
            memory (``"every_k"`` when None; ``"first_latest"``, ``"qdmn"``, ``"qpm"``,
            ``"sam2_window"``); any other method → :class:`~sdk.errors.ParameterError`.
        proposals: ``dmn_aoa`` only: None = the export's ``proposals.onnx`` when its manifest
            has one (:class:`~sdk.proposal_graph.ProposalGenerator`, with these providers and
            threads), else no proposals; False = no proposals (the coarse mask is 0, so
            RefineNet sees the pixel readout alone); or a callable (image [1,3,Hp,Wp] float32,
            {"f16","f8","f4"}) → :class:`~sdk.proposals.Proposals` (:mod:`sdk.dmn_aoa`).
        **policy_params: override the manifest's ``policy_defaults[method]``, e.g. ``k=5``,
            ``max_frames=20`` for every_k, ``sigma=0.7`` for qdmn; ``quality_gate=σ`` (any
            policy) writes only frames whose normalised QAM score is ≥ σ. Types and ranges: the
            policy classes of :mod:`sdk.policies` (counts are ints, thresholds σ finite numbers in
            [0, 1]; :mod:`sdk.params`). A bad value in the manifest's own ``policy_defaults`` →
            :class:`~sdk.errors.ManifestError`.

    Every argument is checked before any graph is loaded: a wrong type (bool or float for a
    count, 0/1 for a flag, a str for a number), NaN, ±inf or a value out of range raises
    :class:`~sdk.errors.ParameterError` (an :class:`~sdk.errors.InputError`) naming the
    parameter, the value, its type and the accepted range. ``providers`` is checked by
    :mod:`sdk.runtime` (:class:`~sdk.errors.InputError`).

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

    Example — the bundled model on the generated demo clip (objects 1 and 2): the first frame
    with its mask, then frames alone, soft output, an object removed and given again::

        >>> import numpy as np
        >>> import sdk
        >>> from sdk.demo import make_clip
        >>> rgb, truth = make_clip(frames=8)        # uint8 [T,240,320,3], label maps uint8 [T,240,320]
        >>> seg = sdk.Segmenter(resolution=240)     # bundled model, CUDA if present else CPU
        >>> labels = seg.step(rgb[0], truth[0])     # first frame: its mask
        >>> seg.objects
        (1, 2)
        >>> for frame in rgb[1:4]:
        ...     labels = seg.step(frame)            # uint8 [240,320]: 0, 1 or 2
        >>> out = seg.step(rgb[4], return_probabilities=True)
        >>> out.probabilities.shape, out.probabilities.dtype, out.objects
        ((2, 240, 320), dtype('float32'), (1, 2))
        >>> argmax = np.argmax([out.background, *out.probabilities], axis=0)
        >>> bool(np.array_equal(out.labels, np.array([0, *out.objects], np.uint8)[argmax]))
        True
        >>> confident = out.probabilities[out.objects.index(1)] > 0.9   # a threshold of one's own
        >>> seg.remove_object(2)                    # object 2 is done: its memory rows are freed
        >>> seg.objects, sorted(np.unique(seg.step(rgb[5])).tolist())
        ((1,), [0, 1])
        >>> labels = seg.step(rgb[6], truth[6])     # a mask holding 2 adds it again, as a new object
        >>> seg.objects
        (1, 2)
    """

    def __init__(self, model: str | Path | None = None, method: str | None = None, providers=None,
                 resolution: int | str | None = "manifest", top_k: int | None = None,
                 threads: int | None = None, temporary_memory: bool | None = None, memory: str | None = None,
                 proposals=None, **policy_params):
        self.manifest: Manifest = resolve_model(model)
        m = self.manifest
        # every argument is checked (sdk.params) before a graph is loaded
        if isinstance(resolution, str) and resolution == "manifest":
            resolution = m.resolution
        else:                                        # None or ≥ MIN_FEATURE_ROWS × stride
            resolution = check_resolution(resolution, m.stride)
        self.resolution = resolution
        top_k = segmenter_option("top_k", top_k)
        threads = segmenter_option("threads", threads)
        temporary_memory = segmenter_option("temporary_memory", temporary_memory)
        self.method = m.method if method is None else method
        dmn = isinstance(self.method, str) and self.method == dmn_aoa.METHOD
        if not dmn and (memory is not None or proposals is not None):
            raise refuse("Segmenter", "memory" if memory is not None else "proposals",
                         memory if memory is not None else proposals, "None", f"it is an option of method "
                         f"{dmn_aoa.METHOD!r} (its pixel-memory policy and object proposals)")
        # dmn_aoa: its frame-slot policy ("memory") schedules both the pixel and the object memory
        self._policy_method = (dmn_aoa.DEFAULT_MEMORY if memory is None else memory) if dmn else self.method
        defaults = m.policy_defaults.get(self._policy_method, {}) if isinstance(self._policy_method, str) else {}
        self._policy_params = {**defaults, **policy_params}
        try:
            policy = make_policy(self._policy_method, **self._policy_params)  # fail early on a bad method/param
        except ParameterError as error:                            # the manifest's own default is bad
            if getattr(error, "parameter", None) in defaults and error.parameter not in policy_params:
                raise ManifestError(f"{m.root / 'manifest.json'}: policy_defaults[{self.method!r}]: {error}") from error
            raise
        self._dmn = None
        if dmn:
            try:
                check_policy(policy)
            except ValueError as error:
                raise refuse("Segmenter", "memory", memory, "a frame-slot policy", str(error)) from error
            if proposals is None and m.proposals is not None:       # the export's own proposals graph
                proposals = ProposalGenerator(m, providers=providers, threads=threads)
            # ManifestError without the graphs
            self._dmn = dmn_aoa.DMNPipeline(m, None if proposals is False else proposals)
        missing = [name for name in policy.requires if name not in m.graphs]
        if missing:
            raise ManifestError(f"memory policy {self.method!r} needs graph(s) {', '.join(missing)}, which "
                                f"the export {m.root} lacks: use a model exported with those heads "
                                f"(vos-export --method {self.method})")
        self.top_k = (policy.top_k or m.top_k) if top_k is None else top_k
        inference = m.inference
        always = ("prior_enhance",) if inference["prior_enhance"] == "always" else ()
        missing = [name for name in always if name not in m.graphs]
        if missing:
            raise ManifestError(f"the export {m.root} says prior enhancement runs on every frame, but it has no "
                                "prior_enhance graph: re-export the model")
        if temporary_memory is None:                 # the manifest's, where the policy keeps frame slots (xmem too)
            temporary_memory = inference["temporary_memory"] and not policy.per_feature
        elif temporary_memory and policy.per_feature:
            raise refuse("Segmenter", "temporary_memory", temporary_memory, "False or None",
                         f"temporary_memory works with frame-slot policies; {self.method!r} keeps features")
        self.temporary_memory = bool(temporary_memory)
        self._object_keys = inference["memory_keys"] == "per_object"
        if self._object_keys and {"sam_key", "sam_value"} & set(policy.requires):
            raise ManifestError(f"memory policy {self.method!r} folds keys with SAM, which this export's "
                                "per-object keys do not support")
        extra = dmn_aoa.GRAPHS if dmn else ()
        self._graphs = Graphs(m, providers, tuple(dict.fromkeys(GRAPH_NAMES + policy.requires + always + extra)),
                              threads=threads)
        self._prior_input = "prior_enhance" in policy.requires or bool(always)
        self._mean = np.asarray(m.mean, np.float32)
        self._std = np.asarray(m.std, np.float32)
        self.timings: dict[str, float] = {}
        self.reset()

    # -- state -----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the video: empty memory, no objects, next :meth:`step` is a first frame."""
        self.policy: MemoryPolicy = make_policy(self._policy_method, **self._policy_params)
        if self._dmn is not None:
            self._dmn.reset()
        self.bank = MemoryBank(self.manifest.key_channels, self.manifest.value_channels,
                               growable=self.policy.growable, object_keys=self._object_keys,
                               temporary=self.temporary_memory)
        self._labels: list[int] = []                 # object index → label value
        self._lut = np.zeros(1, np.uint8)            # argmax channel → label value
        self._geometry: Geometry | None = None
        self._priors = Priors()                      # prior enhancement's prior masks
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
        """Bytes of the memory bank's preallocated arrays (0 before the first frame); with
        method ``dmn_aoa`` the object memory's too."""
        return self.bank.bank_bytes + (self._dmn.bank_bytes if self._dmn is not None else 0)

    @property
    def geometry(self) -> Geometry | None:
        """Input → resized → padded sizes of the current video (None before its first frame)."""
        return self._geometry

    @property
    def frame_index(self) -> int:
        """Index the next :meth:`step` gives its frame (0 = first frame of the video)."""
        return self._t

    def remove_object(self, object_id: int) -> None:
        """Stop tracking object ``object_id`` (a label value in :attr:`objects`), e.g. one that
        has left the scene (SAM 2's ``remove_object``, Cutie's ``delete_objects``).

        Its value rows (and its memory keys, for exports with per-object keys) leave the
        memory bank, in place: the bank's buffers keep their size (:attr:`bank_bytes`
        unchanged, constant memory; the next new object takes the rows). The frames in memory
        stay for the other objects. From the next :meth:`step` on it is not predicted and not
        in the label maps, the soft output or :attr:`objects` (the others keep their order).
        The memory policy forgets what it kept of it (QDMN, QPM, ``quality_gate``: its
        first-frame QAM score in the normalisation S̄A_1, and QPM's previous-frame quality);
        the prior masks of prior enhancement (QDMN, QPM) no longer include it. A later
        :meth:`step` whose mask holds ``object_id`` adds it again as a new object (last in
        :attr:`objects`, with no memory of before). Removing the last object is allowed: the
        next :meth:`step` then needs a mask, as a first frame does. :attr:`frame_index` does
        not change.

        Raises :class:`~sdk.errors.InputError` for an id that is not a tracked object (naming
        it and the tracked ones) or is not an int (NumPy ints accepted); the Segmenter is then
        unchanged.
        """
        label = self._tracked(object_id)
        index = self._labels.index(label)
        priors = self._priors.without(index, label)   # new arrays first: nothing below can fail
        policy = copy.deepcopy(self.policy)
        policy.remove_object(index)
        self.bank.remove_object(index)
        if self._dmn is not None:
            self._dmn.remove_object(index)
        self.policy, self._priors = policy, priors
        self._labels = [value for value in self._labels if value != label]
        self._lut = np.array([0, *self._labels], np.uint8)

    def _tracked(self, object_id) -> int:
        """``object_id`` as the int label value of a tracked object; InputError otherwise."""
        tracked = (", ".join(map(str, self._labels)) if self._labels else
                   "none (no frame with a mask yet)" if self._geometry is None else "none (all removed)")
        if isinstance(object_id, (bool, np.bool_)) or not isinstance(object_id, (int, np.integer)):
            raise InputError(f"remove_object takes an object id, the int label value of a tracked object, got "
                             f"{object_id!r} ({type(object_id).__name__}); tracked: {tracked}")
        if int(object_id) not in self._labels:
            raise InputError(f"unknown object id {int(object_id)}: not a tracked object (tracked: {tracked})")
        return int(object_id)

    # -- inference -------------------------------------------------------------------------
    def step(self, frame: np.ndarray, mask: np.ndarray | None = None,
             return_probabilities: bool = False) -> np.ndarray | SoftOutput:
        """Segment one frame; returns a fresh label map uint8 [H,W] (0 = background, else the
        label of a known object; never :data:`VOID`), or with ``return_probabilities=True`` a
        :class:`~sdk.soft_output.SoftOutput`: that label map (``labels``), the per-object
        probabilities float32 [N,H,W] at input size that it is the argmax of
        (``probabilities``, background excluded), the objects' label values in channel order
        (``objects``) and the background's probability float32 [H,W] (``background``). On a
        frame with a mask the mask is imposed on them (1 inside the given object, 0 for the
        others; see :class:`~sdk.soft_output.SoftOutput`). Without the flag nothing of them is
        computed (the frame costs what it did).

        frame: RGB uint8 [H,W,3] (H, W ≥ 1), the same size for the whole video; any array NumPy
            converts to that (any strides: views, Fortran order and negative strides give the
            same result as a C-contiguous copy). Refused, with a hint how to convert: other
            dtypes (float, bool, int64, uint16, …: no scaling is guessed), greyscale [H,W] or
            [H,W,1], RGBA [H,W,4], empty frames, None and objects NumPy cannot convert.
        mask: optional label map [H,W] of the frame's size: uint8 or any other integer dtype
            with values 0 (background), 1..max_objects (objects, not necessarily contiguous)
            and, for models with max_objects < 255, 255 = void (DAVIS: "no label here"); or a
            bool map (True = the object of label 1). Refused: float masks (even with integral
            values: convert with ``mask.astype(np.uint8)``), other shapes (RGB masks: read them
            with :func:`sdk.io.read_mask`), negative labels and labels above max_objects
            (other than void; a binary 0/255 mask should be read with
            :func:`sdk.io.read_mask`, which maps it to label 1). Required on the first frame,
            holding at least one object; later it may introduce new objects or re-state known
            ones. The objects in it are taken as given (they are the output there; predictions
            of the other known objects are merged in as XMem does) and the frame is written to
            memory. A mask without any object after the first frame (all 0 and void) counts as
            no mask.
        Void pixels carry no label: on the first frame they count as background; on later
        frames the prediction of every known object fills them, the given ones included (as
        if no mask were given there). After :meth:`remove_object` has removed the last object,
        the next frame needs a mask (as a first frame does).
        return_probabilities: bool (NumPy bool too); anything else →
            :class:`~sdk.errors.ParameterError`.

        :attr:`timings` then holds this frame's per-stage wall times in ms (:data:`STAGES`,
        0 for stages that did not run, plus ``total``).

        Raises :class:`~sdk.errors.InputError` for a refused frame or mask (above), a frame
        whose size differs from the first frame's, a first frame (or a frame with no object
        left) without a mask or with an empty one, or a frame NumPy has no memory for (try a
        smaller ``resolution``); :class:`~sdk.errors.GraphRunError` when onnxruntime fails on
        a graph (e.g. cannot allocate its memory at this resolution) or a graph returns NaN or
        infinite values (the decoder's probabilities, the readout, QAM scores, the value encoder's outputs, keys
        going into memory, SAM's RDE fold), naming the graph and the frame index. A call that
        raises changes nothing: the memory, the policy's state, the objects and
        :attr:`frame_index` are as before it, and the next call gives what it would have given
        without the refused one.
        """
        t0 = perf_counter()
        if not isinstance(return_probabilities, (bool, np.bool_)):
            raise refuse("Segmenter.step", "return_probabilities", return_probabilities, "True or False")
        frame = self._check_frame(frame)
        mask, given, void = self._check_mask(mask, frame.shape[:2])
        if self._geometry is None and mask is None:
            raise InputError("the first frame needs a mask: step(frame, mask) with a label map "
                             "holding at least one object (labels 1..max_objects)")
        if not self._labels and mask is None:
            raise InputError("no object is tracked: remove_object removed the last one, so this frame needs a "
                             "mask: step(frame, mask) with a label map holding the objects to track from here "
                             "(labels 1..max_objects), or reset() for a new video")
        policy, bank = copy.deepcopy(self.policy), self.bank.snapshot()
        try:
            return self._step(frame, mask, given, void, t0, bool(return_probabilities))
        except BaseException as error:               # roll back: the refused call never happened
            self.policy = policy
            self.bank.restore(bank)
            self._work.clear()                       # a first frame of another size must start from zeros
            if isinstance(error, MemoryError):
                raise InputError(f"not enough memory to segment a {frame.shape[0]}x{frame.shape[1]} frame at "
                                 f"resolution {self.resolution} with a memory bank of {self.policy.capacity()} "
                                 f"frame slots{self._features_text()}: use a smaller resolution, or a policy that "
                                 "keeps fewer frames (max_frames, beta, capacity_frames, long_term_elements)"
                                 ) from error
            raise

    def _step(self, frame: np.ndarray, mask: np.ndarray | None, given: list[int], void: bool,
              t0: float, probabilities: bool) -> np.ndarray | SoftOutput:
        """:meth:`step` on checked inputs. It changes the Segmenter's own attributes only at the
        end, when nothing can fail any more; the bank and the policy may change on the way
        (:meth:`step` restores them when this raises): the bank's buffers are replaced (objects,
        first allocation) before the last graph runs, written in place only after it."""
        ms = dict.fromkeys(STAGES, 0.0)
        self._graphs.run_ms.clear()
        geo, t = self._geometry, self._t
        if geo is None:
            geo = Geometry.for_frame(frame.shape[0], frame.shape[1], self.resolution, self.manifest.stride,
                                     self.manifest.inference["padding"])
        image = geo.image(frame, self._mean, self._std, self._work)
        given_map = None if mask is None else geo.label_map(mask)
        void_map = given_map == VOID if void else None             # [Hp,Wp] bool, later frames only
        ms["preprocess"] = (perf_counter() - t0) * 1e3

        query = self._graphs.run_named("key_encoder", {"image": image})
        key, f16, f8, f4 = query.get("key"), query["f16"], query["f8"], query["f4"]
        prior = None
        if self._prior_input:
            prior = self._priors.of_frame(t, self.policy.prior(t) if t else 0, given_map)
            key, f16 = self._graphs.run("prior_enhance", {"f16": f16, "prior": prior})

        prob = None
        if self.bank.num_valid and (any(label not in given for label in self._labels)
                                    or (void and any(label in self._labels for label in given))):
            prob = self._predict(t, key, f16, f8, f4, ms, image)

        new = [label for label in given if label not in self._labels]
        labels = self._labels + new
        lut = np.array([0, *labels], np.uint8) if new else self._lut
        if new and self.bank.capacity:
            self.bank.add_objects(len(new))
        if not self.bank.capacity:
            hw = int(np.prod(geo.feature_size))
            self.bank.allocate(self.policy.capacity(), hw, len(labels), features=self.policy.feature_positions())
        given_idx = [labels.index(label) for label in given]
        t4 = perf_counter()

        probs = prob if mask is None else merge_given(prob, given_map, given_idx, given, len(labels), void_map)
        agg = soft_aggregate(probs, self._work)                       # [N+1,Hp,Wp]
        full = geo.to_input(agg, self._work)                          # [N+1,H,W]
        if mask is None:
            out = label_values(lut, channel_argmax(full, self._work))  # a fresh array: the caller's
        else:
            rest = [c for c in range(len(full)) if c - 1 not in given_idx]   # bg + objects not given
            labelled = (mask > 0) & (mask != VOID) if void else mask > 0
            predicted = channel_argmax([full[c] for c in rest], self._work)
            out = np.where(labelled, mask, label_values(lut[rest], predicted))
            if void:                                                  # every object's prediction
                out = np.where(mask == VOID, label_values(lut, channel_argmax(full, self._work)), out)
        result = soft_output(out, full, tuple(labels), mask, given, void) if probabilities else out
        ms["postprocess"] += (perf_counter() - t4) * 1e3

        encoded = scores = None
        if self.temporary_memory and t > 0:
            encoded = self._encode_value(image, f16, agg)           # written somewhere either way
        if "qam" in self.policy.requires and self.policy.needs_score(t, mask is not None):
            encoded = encoded or self._encode_value(image, f16, agg)
            (scores,) = self._graphs.run_named("qam", encoded).values()
            self._check_finite("qam", scores=scores)
        table = self.bank.positions if self.policy.per_position else self.bank.frames
        decision = self.policy.on_frame(t, table, mask is not None, scores)
        pending = None if self._dmn is None else self._dmn.encode(self._graphs, t, f16, agg, decision is not None,
                                                                  self._check_finite)
        temporary = decision is None and self.temporary_memory and t > 0
        if decision is not None or temporary:
            encoded = encoded or self._encode_value(image, f16, agg)
            value = encoded["value"]
            memory_key = encoded["key"] if self._object_keys else key[0]
            if not self._object_keys:                # the value encoder's outputs are checked already
                self._check_finite("prior_enhance" if self._prior_input else "key_encoder", key=memory_key)
            memory_key = memory_key.reshape(*memory_key.shape[:-2], -1)
            value = value.reshape(*value.shape[:2], -1)
            if decision is None:
                self.bank.write_temporary(memory_key, value, t)
            else:                                    # SAM's and the potentiation's graphs run before apply writes
                self.bank.apply(decision, memory_key, value, t, partial(self._sam, size=geo.feature_size),
                                self._potentiate)
                self.bank.clear_temporary()

        # commit: nothing below can fail
        if pending is not None:
            self._dmn.commit(self.bank, t, pending)
        self._geometry, self._labels, self._lut = geo, labels, lut
        if self._prior_input:
            self._priors.commit(t, given_map, prior, agg, self._work)
        self._t += 1
        for graph, run_ms in self._graphs.run_ms.items():
            ms[GRAPH_STAGES[graph]] += run_ms
        total = (perf_counter() - t0) * 1e3
        ms["bookkeeping"] = max(0.0, total - sum(ms.values()))
        ms["total"] = total
        self.timings = ms
        return result

    def _check_finite(self, graph: str, bounded: bool = False, **outputs: np.ndarray) -> None:
        """Raise :class:`~sdk.errors.GraphRunError` when one of ``outputs`` (name → float array
        of graph ``graph``'s outputs) holds NaN or ±inf. Exact and cheap: NaN propagates through
        NumPy's min and max, ±inf shows in one of them (≈ 0.07 ms each per million float32 on
        the 2-core VM); ``bounded``: values lie in [0, 1] unless NaN (probabilities), max only."""
        for name, array in outputs.items():
            if np.isfinite(np.max(array)) and (bounded or np.isfinite(np.min(array))):
                continue
            nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
            raise GraphRunError(
                f"graph {graph!r} returned {nan} NaN and {inf} infinite value(s) in {name!r} "
                f"{list(np.shape(array))} at frame {self._t}; its result would be garbage, so the frame was "
                "refused and the Segmenter left unchanged (memory, objects, frame_index). The export's weights "
                "diverge on this input (an RDE fold can): check the export, or use another memory policy")

    def _encode_value(self, image, f16, agg) -> dict[str, np.ndarray]:
        """Value encoder on the soft-aggregated prediction agg [N+1,Hp,Wp] → its outputs:
        ``value`` [N,C_v,h,w] (+ ``key`` [N,C_k,h,w] with per-object keys, + what the QAM reads).
        Raises :class:`~sdk.errors.GraphRunError` when one of them is not finite."""
        own = agg[1:]
        masks = self._work.array("value_masks", (len(own), 2, *own.shape[1:]))   # [N,2,Hp,Wp]
        masks[:, 0] = own
        if len(own) == 1:                                             # Σ others − own = own − own = 0
            masks[0, 1].fill(0)
        else:
            total = np.sum(own, axis=0, out=self._work.array("value_total", own.shape[1:]))
            np.subtract(total, own, out=masks[:, 1])                  # the other objects
        out = self._graphs.run_named("value_encoder", {"image": image, "f16": f16, "masks": masks})
        self._check_finite("value_encoder", **out)
        return out

    def _sam(self, key_rde, value_rde, key, value, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """SAM (RDE-VOS Eq. 4–6): (previous RDE key [C_k,hw], value [N,C_v,hw], new memory
        frame's key, value; the feature map size (h, w), hw = h·w) → new RDE (key [C_k,hw],
        value [N,C_v,hw]) via ``sam_key`` and ``sam_value``. Raises
        :class:`~sdk.errors.GraphRunError` for a non-finite result (a diverging RDE) before
        anything is written."""
        h, w = size
        n = len(value)
        (new_key,) = self._graphs.run("sam_key", {"previous": key_rde.reshape(1, -1, h, w),
                                                  "new": key.reshape(1, -1, h, w)})
        (new_value,) = self._graphs.run("sam_value", {"previous": value_rde.reshape(n, -1, h, w),
                                                      "new": value.reshape(n, -1, h, w)})
        self._check_finite("sam_key", key=new_key)
        self._check_finite("sam_value", value=new_value)
        return new_key.reshape(new_key.shape[1], -1), new_value.reshape(*new_value.shape[:2], -1)

    def _features_text(self) -> str:
        features = self.policy.feature_positions()
        return f" + {features} feature positions" if features else ""

    def _potentiate(self, prototype_keys: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        """XMem's memory potentiation through the export's readout graph: the readout of the
        consolidation candidates' values with the prototypes' keys as queries, softmax over all
        C candidates (top_k = C, XMem's potentiation has no top-k), with the export's affinity.

        prototype_keys [C_k,P] (or [N,C_k,P] with per-object keys), keys [C_k,C] (or
        [N,C_k,C]), values [N,C_v,C] float32 → prototype values [N,C_v,P] float32. The
        prototypes go in as a query map of 1 × q positions (``query_key`` [1,C_k,1,q]), q per
        call bounded so that the graph's gather of q·C values per object stays near
        :data:`POTENTIATION_FLOATS` floats. The graph's ``readout`` output is the memory readout
        alone in every export (what the decoder concatenates with query features happens in
        the decoder graph). Per-object keys: one call per object, with its own keys and values.
        Raises :class:`~sdk.errors.GraphRunError` for a failed run or a non-finite result."""
        n, cv, c = values.shape
        p = prototype_keys.shape[-1]
        out = np.empty((n, cv, p), np.float32)
        if self._object_keys:
            groups = [(slice(i, i + 1), prototype_keys[i], keys[i:i + 1], values[i:i + 1]) for i in range(n)]
        else:
            groups = [(slice(None), prototype_keys, keys[None], values)]
        valid, top_k = np.ones(c, np.float32), np.array(c, np.int64)
        for rows, query, memory_keys, memory_values in groups:
            step = max(1, POTENTIATION_FLOATS // (c * (len(memory_values) * cv + 2)))
            memory_keys, memory_values = np.ascontiguousarray(memory_keys), np.ascontiguousarray(memory_values)
            for start in range(0, p, step):
                q = np.ascontiguousarray(query[:, start:start + step])[None, :, None, :]
                readout, _ = self._graphs.run("readout", {"query_key": q, "memory_keys": memory_keys,
                                                          "memory_values": memory_values, "valid": valid,
                                                          "top_k": top_k})
                out[rows, :, start:start + q.shape[-1]] = readout[:, :, 0, :]
        self._check_finite("readout", potentiation=out)
        return out

    def _predict(self, t, key, f16, f8, f4, ms, image) -> np.ndarray:
        """Readout over the bank's live positions (RDE-VOS Eq. 2–3) + decoder → per-object
        foreground probability [N_mem,Hp,Wp] float32 for the N_mem objects the bank holds.
        Raises :class:`~sdk.errors.GraphRunError` for a non-finite readout or probability."""
        bank = self.bank
        readout, usage = self._graphs.run("readout", {
            "query_key": key, "memory_keys": bank.readout_keys, "memory_values": bank.values,
            "valid": bank.valid, "top_k": np.array(min(self.top_k, bank.num_valid), np.int64)})
        self._check_finite("readout", readout=readout)
        self.policy.on_readout(t, bank.policy_usage(usage))
        if self._dmn is None:
            (logits,) = self._graphs.run("decoder", {"readout": readout, "f16": f16, "f8": f8, "f4": f4})
        else:                                                           # DMN-AOA: template, AOA, RefineNet
            logits = self._dmn.logits(self._graphs, t, image, readout, f16, f8, f4, ms, self._check_finite)
        t0 = perf_counter()
        prob = sigmoid(logits[:, 0], out=logits[:, 0])
        ms["postprocess"] += (perf_counter() - t0) * 1e3               # the sigmoid: the sdk's
        self._check_finite("decoder", bounded=True, probability=prob)   # ±inf logits saturate to 0, 1
        return prob

    # -- input checks ----------------------------------------------------------------------
    def _check_frame(self, frame) -> np.ndarray:
        """→ the frame as a C-contiguous uint8 [H,W,3] array (the caller's when it is one);
        InputError as :meth:`step` says."""
        if frame is None:
            raise InputError("frame is None (a failed read?): step needs an RGB uint8 array [H,W,3]")
        try:
            array = np.asarray(frame)
        except Exception as error:   # ragged lists, objects whose __array__ fails, …
            raise InputError(f"frame must be an RGB uint8 array [H,W,3]; NumPy cannot convert the "
                             f"{type(frame).__name__} given: {error}") from error
        got = f"got {array.dtype} {list(array.shape)}"
        if array.dtype != np.uint8:
            hint = ("a float image must be scaled to 0..255 first, e.g. (frame * 255).round().astype(np.uint8) "
                    "for 0..1 values" if array.dtype.kind == "f" else
                    "convert it with frame.astype(np.uint8) if its values lie in 0..255"
                    if array.dtype.kind in "biu" else f"a {type(frame).__name__} is not an image")
            raise InputError(f"frame must be RGB uint8 [H,W,3], {got}: {hint}")
        if array.ndim != 3 or array.shape[2] != 3:
            hint = ("an RGBA frame: drop alpha with frame[..., :3]" if array.ndim == 3 and array.shape[2] == 4 else
                    "a greyscale frame: make it RGB, e.g. np.repeat(frame.reshape(H, W, 1), 3, axis=2)"
                    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1) else
                    "one frame at a time")
            raise InputError(f"frame must be RGB uint8 [H,W,3], {got}: {hint}")
        if 0 in array.shape:
            raise InputError(f"frame must be RGB uint8 [H,W,3] with H, W ≥ 1, {got} (empty)")
        geo = self._geometry
        if geo is not None and array.shape[:2] != (geo.height, geo.width):
            raise InputError(f"frame size changed from {geo.height}x{geo.width} to "
                             f"{array.shape[0]}x{array.shape[1]} mid-video; call reset() to start a new video")
        return np.ascontiguousarray(array)

    def _check_mask(self, mask, size) -> tuple[np.ndarray | None, list[int], bool]:
        """→ (C-contiguous uint8 label map [H,W] or None when it holds no object, sorted
        labels present, whether it has void pixels); void becomes background on a first frame.
        InputError as :meth:`step` says."""
        if mask is None:
            return None, [], False
        try:
            array = np.asarray(mask)
        except Exception as error:
            raise InputError(f"mask must be an integer label map [H,W]; NumPy cannot convert the "
                             f"{type(mask).__name__} given: {error}") from error
        got = f"got {array.dtype} {list(array.shape)}"
        limit = self.manifest.max_objects
        void = VOID if limit < VOID else None
        labels_are = f"labels are 0 (background), 1..{limit}" + (f" and {VOID} (void)" if void else "")
        if array.dtype.kind not in "biu":
            hint = ("float masks are refused even with integral values: convert a label map with "
                    "mask.astype(np.uint8), threshold a probability map (e.g. mask > 0.5)"
                    if array.dtype.kind == "f" else labels_are)
            raise InputError(f"mask must be an integer label map (or bool) of the frame's size {list(size)}, "
                             f"{got}: {hint}")
        if array.shape != size:
            hint = ("an RGB(A) mask: read it with sdk.io.read_mask, which maps DAVIS colours to labels"
                    if array.ndim == 3 and array.shape[-1] in (3, 4) else
                    "take mask[..., 0]" if array.ndim == 3 and array.shape[-1] == 1 else
                    "check it is this video's mask at the frames' resolution (DAVIS: Annotations/480p goes with "
                    "JPEGImages/480p), or resize it with nearest-neighbour interpolation, which keeps labels as "
                    "labels: cv2.resize(mask, (W, H), interpolation=cv2.INTER_NEAREST)" if array.ndim == 2 else
                    labels_are)
            raise InputError(f"mask must be an integer label map of the frame's size {list(size)}, {got}: {hint}")
        binary = "a binary 0/255 mask should be read with sdk.io.read_mask, which maps it to label 1"
        if array.dtype.kind != "b":
            lo, hi = int(array.min()), int(array.max())
            if lo < 0:
                raise InputError(f"mask has negative label {lo}; {labels_are}")
            if hi > 255:
                raise InputError(f"mask label {hi} exceeds this model's limit of max_objects = {limit} ({labels_are}; "
                                 "a 16-bit label PNG should be read with sdk.io.read_mask)")
        mask = np.ascontiguousarray(array, dtype=np.uint8)     # bool: True → 1
        counts = np.bincount(mask.ravel(), minlength=256)
        present = [int(v) for v in np.flatnonzero(counts[1:]) + 1]
        labels = [v for v in present if v != void]
        if labels and labels[-1] > limit:
            raise InputError(f"mask label {labels[-1]} exceeds this model's limit of max_objects = {limit} "
                             f"({labels_are}; {binary})")
        has_void = void is not None and counts[void] > 0
        first = self._geometry is None
        if not labels:
            if first:
                what = "only background and void (255)" if has_void else "all background"
                raise InputError(f"the first frame's mask is empty ({what}); it must hold at least one object "
                                 f"(labels 1..{limit})" + (f"; {binary}" if has_void else ""))
            return None, [], False
        if has_void and first:                                  # void on the first frame = background
            mask = np.where(mask == void, np.uint8(0), mask)
            has_void = False
        return mask, labels, bool(has_void)
