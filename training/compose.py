"""Build a checkpoint from others (how the bundled model is built).

``python3 -m training.compose OUT --core CORE --heads HEADS``: the network of HEADS (with its
method heads) gets every tensor of CORE (key/value encoders, key projection, decoder) and the
head tensors (``prior_enhance``, ``qam``, ``sam_key``, ``sam_value``) of HEADS; written as
fp16 OUT (.safetensors + .json naming both sources). Raises RuntimeError if CORE does not fit
HEADS's network.

``python3 -m training.compose OUT --average A B [--weight W]``: the weight-space ensemble
(1 − W)·A + W·B of two checkpoints of the same network, one fine-tuned from the other
(WiSE-FT, Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022, Eq. 1:
θ_α = (1 − α)·θ_0 + α·θ_1). Integer tensors (BatchNorm's batch counts) are taken from A.
Raises ValueError when the two networks' configs differ, or W is outside [0, 1].
"""
from __future__ import annotations

import argparse
import json

from safetensors.torch import load_file

from .checkpoint import _paths, load_checkpoint, load_weights_into, save_checkpoint
from .networks import VOSNetwork

HEAD_PREFIXES = ("prior_enhance", "qam", "sam_key", "sam_value")


def compose(out, core, heads) -> VOSNetwork:
    """→ the composed network (also written to ``out`` as fp16)."""
    st, js = _paths(heads)
    meta = json.loads(js.read_text())
    net = VOSNetwork(meta["config"], pretrained=False)
    load_weights_into(net, core)
    tensors = {k: v.float() for k, v in load_file(str(st)).items() if k.split(".")[0] in HEAD_PREFIXES}
    _, unexpected = net.load_state_dict(tensors, strict=False)
    if unexpected:
        raise RuntimeError(f"{heads}: head tensors this network lacks: {unexpected[:5]}")
    save_checkpoint(out, net, {"core": str(core), "heads": str(heads), "heads_state": meta["state"]}, half=True)
    return net


def average(out, a, b, weight: float = 0.5) -> dict:
    """Write (1 − ``weight``)·``a`` + ``weight``·``b`` (WiSE-FT, Eq. 1; ``weight`` = α, unitless
    in [0, 1]) of the checkpoints ``a`` and ``b`` (.safetensors + .json paths or stems) as fp16
    ``out`` (.safetensors + .json naming both sources and the weight) → the averaged state dict
    {name: float32 tensor, shapes as in ``a``; integer tensors copied from ``a``}. The mean is
    taken in float32 (:func:`~training.checkpoint.load_checkpoint` widens fp16).

    Raises ValueError for ``weight`` outside [0, 1] or for configs that differ once resolved
    (``net.config``, :func:`training.networks.resolve_config`; equal configs mean equal tensor
    names and shapes); FileNotFoundError naming a missing .safetensors or .json; RuntimeError
    for a checkpoint whose tensors do not fit its own config."""
    import torch

    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    net, _ = load_checkpoint(a)
    other, _ = load_checkpoint(b)
    if net.config != other.config:
        raise ValueError(f"{a} and {b} are different networks: {net.config} vs {other.config}")
    tb = other.state_dict()
    mixed = {k: torch.lerp(v, tb[k], weight) if v.is_floating_point() else v
             for k, v in net.state_dict().items()}
    net.load_state_dict(mixed, strict=True)
    save_checkpoint(out, net, {"average": {"a": str(a), "b": str(b), "weight": weight}}, half=True)
    return mixed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--core", help="checkpoint whose core weights are kept (with --heads)")
    parser.add_argument("--heads", help="checkpoint whose method heads are kept (with --core)")
    parser.add_argument("--average", nargs=2, metavar=("A", "B"),
                        help="instead: the weight average (1 - W)·A + W·B of two checkpoints of one network")
    parser.add_argument("--weight", type=float, default=0.5, help="W of --average (default 0.5)")
    args = parser.parse_args(argv)
    if args.average and (args.core or args.heads):
        parser.error("give either --core and --heads, or --average A B")
    try:
        if args.average:
            average(args.out, *args.average, weight=args.weight)
        elif args.core and args.heads:
            compose(args.out, args.core, args.heads)
        else:
            parser.error("give --core and --heads, or --average A B")
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        parser.exit(2, f"training.compose: {exc}\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
