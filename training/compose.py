"""Compose a checkpoint from a core and a heads checkpoint (how the bundled model is built).

``python3 -m training.compose OUT --core CORE --heads HEADS``: the network of HEADS (with its
method heads) gets every tensor of CORE (key/value encoders, key projection, decoder) and the
head tensors (``prior_enhance``, ``qam``, ``sam_key``, ``sam_value``) of HEADS; written as
fp16 OUT (.safetensors + .json naming both sources). Raises RuntimeError if CORE does not fit
HEADS's network.
"""
from __future__ import annotations

import argparse
import json

from safetensors.torch import load_file

from .checkpoint import _paths, load_weights_into, save_checkpoint
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--core", required=True, help="checkpoint whose core weights are kept")
    parser.add_argument("--heads", required=True, help="checkpoint whose method heads are kept")
    args = parser.parse_args(argv)
    compose(args.out, args.core, args.heads)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
