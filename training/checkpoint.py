"""Checkpoints: ``X.safetensors`` (weights) + ``X.json`` (network config and training state).

No pickles: weights are read with safetensors, the optimizer state (resume only) with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from .networks import VOSNetwork


def _paths(path):
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_checkpoint(path, net: VOSNetwork, state: dict | None = None, half: bool = False) -> Path:
    """Write ``path`` (.safetensors) and its .json sidecar atomically; ``half`` stores fp16
    weights (the bundled model). ``state`` (iteration, …) goes into the JSON. Returns the
    .safetensors path."""
    st, js = _paths(path)
    st.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.half() if half and v.is_floating_point() else v).cpu().contiguous()
               for k, v in net.state_dict().items()}
    save_file(tensors, str(st) + ".tmp")
    os.chmod(str(st) + ".tmp", 0o644)            # safetensors creates it owner-only
    os.replace(str(st) + ".tmp", st)
    js.write_text(json.dumps({"config": net.config, "state": state or {}, "dtype": "float16" if half else "float32"},
                             indent=2))
    return st


def load_checkpoint(path, map_location="cpu") -> tuple[VOSNetwork, dict]:
    """Read a checkpoint → (network in float32, JSON dict with ``config`` and ``state``).

    Raises FileNotFoundError naming the missing file and RuntimeError on mismatching tensors.
    """
    st, js = _paths(path)
    for p in (st, js):
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint file {p} not found (a checkpoint is X.safetensors + X.json)")
    meta = json.loads(js.read_text())
    net = VOSNetwork(meta["config"], pretrained=False)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(st), device=map_location).items()}
    net.load_state_dict(sd, strict=True)
    return net, meta


def load_weights_into(net: VOSNetwork, path, fresh=()) -> None:
    """Copy the weights of checkpoint ``path`` into ``net`` (e.g. a main-stage model into a
    network that adds method heads). Every tensor of the checkpoint must exist in ``net`` with
    the same shape; parameters of ``net`` the checkpoint lacks must all belong to its heads
    (they keep their fresh initialisation), as do the modules named in ``fresh`` (e.g.
    ``["sam_key", "sam_value"]``: retrain them from scratch). Raises FileNotFoundError /
    RuntimeError naming the mismatch."""
    st, _ = _paths(path)
    if not st.is_file():
        raise FileNotFoundError(f"checkpoint file {st} not found")
    sd = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(st)).items()
          if k.split(".")[0] not in fresh}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    heads = ("prior_enhance.", "qam.", "sam_key.", "sam_value.")
    stray = [k for k in missing if not k.startswith(heads)]
    if unexpected or stray:
        raise RuntimeError(f"checkpoint {st} does not fit this network: unexpected {unexpected[:5]}, "
                           f"missing non-head tensors {stray[:5]}")
