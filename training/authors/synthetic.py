"""Synthetic checkpoints in the authors' layouts: their exact names and shapes, random values.

For tests and for speed measurements (``vos-bench`` on an STCN/RDE-VOS/QDMN-sized export
without the released weights). Values are drawn so that activations stay in a sane range
through the deep ResNets (He-normal convs, batch-norm statistics near identity with the last
norm of each residual branch scaled down), so that the masks are neither all background nor
all foreground on real frames.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoints import ARCHS


def randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter and batch-norm buffer of ``net`` with seeded random values; returns it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in net.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.05)
            elif isinstance(module, nn.BatchNorm2d):
                # residual stages' 2nd/3rd norms and shortcut norms scaled down: the activations
                # of 16 stacked bottlenecks stay O(1)
                damped = (name.endswith(("bn3", "bn2")) and "layer" in name) or name.endswith("downsample.1")
                scale = 0.3 if damped else 1.0
                module.weight.copy_(scale * (0.75 + 0.5 * torch.rand(module.weight.shape, generator=gen)))
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.05)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.05)
                module.running_var.copy_(0.75 + 0.5 * torch.rand(module.running_var.shape, generator=gen))
                module.num_batches_tracked.fill_(1000)
    return net


def calibrate(net: nn.Module, seed: int = 0) -> nn.Module:
    """Shift the decoder's last bias so that the median logit of a memory readout on a smooth
    random frame is 0: random weights then give masks with both labels instead of all
    foreground or all background. Returns ``net``."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.interpolate(torch.randn(1, 3, 6, 8, generator=gen), size=(96, 128), mode="bilinear")
    masks = torch.zeros(1, 2, 96, 128)
    masks[:, 0, 24:72, 32:96] = 1
    with torch.no_grad():
        if getattr(net, "inference", {}).get("memory_keys") == "per_object":
            f16, f8, f4 = net.encode_key(image)
            key, f16 = net.enhance(f16, masks[:, :1])
            memory_key, value, _ = net.encode_value(image, masks)
        else:
            key, f16, f8, f4 = net.encode_key(image)
            memory_key, value = key, net.encode_value(image, f16, masks)
        m = value.shape[2] * value.shape[3]
        readout, _ = net.readout(key, memory_key.flatten(2), value.flatten(2), torch.ones(m), torch.tensor(min(20, m)))
        logits = net.decode(readout, f16, f8, f4)
        net.decoder.pred.bias -= logits.median()
    return net


def synthetic_state_dict(arch: str, seed: int = 0, stage0: bool = False) -> dict[str, torch.Tensor]:
    """A state_dict with the authors' keys and shapes for ``arch`` (``stcn``, ``rde``, ``qdmn``),
    random values. ``stage0`` (STCN/RDE-VOS) gives ``value_encoder.conv1.weight`` 4 input
    channels, as in STCN's ``stcn_s0.pth``. Raises KeyError for an unknown arch."""
    sd = calibrate(randomise(ARCHS[arch](), seed).eval(), seed).state_dict()
    if stage0:
        sd["value_encoder.conv1.weight"] = sd["value_encoder.conv1.weight"][:, :4].clone()
    return sd


def write_synthetic_checkpoint(path: str | Path, arch: str, seed: int = 0, stage0: bool = False,
                               prefix: str = "") -> Path:
    """``torch.save`` a :func:`synthetic_state_dict` to ``path`` (keys prefixed by ``prefix``,
    e.g. ``"module."`` as DataParallel saves them); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({prefix + k: v for k, v in synthetic_state_dict(arch, seed, stage0).items()}, path)
    return path


def main(argv=None) -> None:
    """``python -m training.authors.synthetic --arch stcn --out runs/stcn-random.pth``: write a
    random checkpoint in an authors' layout (for speed runs without the released weights)."""
    import click

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--arch", type=click.Choice(sorted(ARCHS)), required=True, help="Authors' layout.")
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help=".pth to write.")
    @click.option("--seed", default=0, show_default=True, help="Random seed of the weights.")
    @click.option("--stage0", is_flag=True, help="4-channel value conv1, as STCN's stcn_s0.pth.")
    def command(arch, out, seed, stage0):
        """Write a synthetic checkpoint: the authors' exact keys and shapes, random weights."""
        click.echo(f"wrote {write_synthetic_checkpoint(out, arch, seed, stage0)}")

    command.main(args=argv, prog_name="python -m training.authors.synthetic")


if __name__ == "__main__":
    main()
