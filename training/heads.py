"""The memory methods' extra heads: QAM (QDMN/QPM), prior enhancement (QDMN/QPM) and SAM (RDE-VOS).

Each head is exported as its own ONNX graph (``docs/graph-contract.md``) so that a policy runs
only the heads it needs:

* :class:`QAMHead` — quality assessment module, QDMN §3.2 Eq. 1 (QPM §2.2): value feature →
  predicted mask IoU per object. The score encoder *is* the value encoder (shared weights), so
  the head starts from the memory value ``f_s`` the sdk already computed.
* :class:`PriorEnhance` — QDMN Eq. 5 / QPM Eq. 4: ``f_e = σ(Conv(f_t ⊕ M↓)) ⊗ f_t`` on the
  stride-16 query feature.
* :class:`SAM` — spatio-temporal aggregation module, RDE-VOS §3.3 Eq. 4–6: previous RDE and the
  new memory frame on a time axis of 2 → extracting (non-local) → enhancing (residual ASPP) →
  squeezing (2×3×3 conv) → the new RDE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("qam", "prior", "sam")


class QAMHead(nn.Module):
    """QAM after the shared score encoder (QDMN Eq. 1: S^A_t = Fc(Conv(f_s))).

    Four 3×3 convs (ReLU; the 2nd and 4th with stride 2), global average pooling, two fully
    connected layers and a sigmoid. value [N,C_v,h,w] float32 → score [N] float32 in [0,1],
    trained to the IoU of the binarised mask the value encodes with the ground truth (Eq. 2).
    """

    def __init__(self, value_channels: int, width: int = 64, hidden: int = 32):
        super().__init__()
        layers, cin = [], value_channels
        for stride in (1, 2, 1, 2):
            layers += [nn.Conv2d(cin, width, 3, stride, 1), nn.ReLU(inplace=True)]
            cin = width
        self.convs = nn.Sequential(*layers)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        x = self.convs(value).mean((2, 3))
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x))))[:, 0]


class PriorEnhance(nn.Module):
    """Prior enhancement, QDMN Eq. 5 (QPM Eq. 4): f_e = σ(Conv(f_t ⊕ M_{t−1}↓)) ⊗ f_t.

    f16 [B,C16,h,w] float32, prior [B,1,16h,16w] float32 in [0,1] (foreground probability of
    the prior frame) → enhanced f16 [B,C16,h,w]. M↓ is the 16×16 average of the prior (one value
    per stride-16 cell). The 3×3 conv gives the one-channel prior map f_p; its bias starts at 4
    and its weights at 0, so a fresh head passes f_t almost unchanged (σ(4) ≈ 0.98) and a network
    trained without it keeps working while the head learns a *weak* prior (QDMN §3.4).
    """

    def __init__(self, f16_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(f16_channels + 1, 1, 3, 1, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.constant_(self.conv.bias, 4.0)

    def forward(self, f16: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        small = F.avg_pool2d(prior, 16)
        return torch.sigmoid(self.conv(torch.cat([f16, small], 1))) * f16


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLab v3, rates 6/12/18 at output stride 16 + image
    pooling), 2-D, on frames folded into the batch. Its projection starts at zero so that
    ``x + ASPP(x)`` (RDE-VOS Eq. 6) starts as the identity."""

    def __init__(self, channels: int, width: int, rates=(6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList([nn.Conv2d(channels, width, 1)] + [
            nn.Conv2d(channels, width, 3, padding=r, dilation=r) for r in rates])
        self.pool = nn.Conv2d(channels, width, 1)
        self.project = nn.Conv2d(width * (len(rates) + 2), channels, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [F.relu(b(x)) for b in self.branches]
        pooled = F.relu(self.pool(x.mean((2, 3), keepdim=True)))
        feats.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(feats, 1))


class SAM(nn.Module):
    """Spatio-temporal aggregation module (RDE-VOS §3.3, Fig. 2c), for keys (C = C_k) or for
    values (C = C_v, objects in the batch).

    previous [B,C,h,w] (RDE at t − θ), new [B,C,h,w] (the new memory frame) float32 → RDE at t
    [B,C,h,w]:

    * Eq. 4: x = Cat_time(previous, new) ∈ R^{B×C×2×h×w}.
    * Eq. 5 (extracting): x_agg = x + W_z((1/C(x)) ω(x)ᵀ φ(x↓) g(x↓)) — a non-local block
      (Wang et al. 2018, dot-product form) with 1×1×1 convs ω, φ, g to C/2 channels, φ and g
      on x max-pooled 2×2 in space only (no pooling in time), C(x) = 2·h·w the number of
      positions of x, output conv W_z and residual as in the non-local block. The product is
      evaluated as ω(x)ᵀ(φ g ᵀ)/C(x) — associativity of the matrix product, same numbers,
      O(C²·hw) instead of O(h²w²).
    * Eq. 6 (enhancing, squeezing): RDE = Squeeze(x_agg + ASPP(x_agg)), Squeeze = a 2×3×3
      Conv3d that collapses the time axis.

    Initialisation: W_z and the ASPP projection start at zero and Squeeze at the mean of its two
    inputs, so a fresh SAM returns (previous + new)/2; training moves it from there.
    """

    def __init__(self, channels: int, aspp_width: int | None = None):
        super().__init__()
        inner = channels // 2
        self.omega = nn.Conv3d(channels, inner, 1)
        self.phi = nn.Conv3d(channels, inner, 1)
        self.g = nn.Conv3d(channels, inner, 1)
        self.w_z = nn.Conv3d(inner, channels, 1)
        nn.init.zeros_(self.w_z.weight)
        nn.init.zeros_(self.w_z.bias)
        self.aspp = ASPP(channels, aspp_width or max(16, channels // 4))
        self.squeeze = nn.Conv3d(channels, channels, (2, 3, 3), padding=(0, 1, 1))
        with torch.no_grad():
            self.squeeze.weight.zero_()
            self.squeeze.weight[:, :, :, 1, 1] = 0.5 * torch.eye(channels)[:, :, None]
            self.squeeze.bias.zero_()

    def forward(self, previous: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        x = torch.stack([previous, new], 2)                              # [B,C,2,h,w]
        b, c, t, h, w = x.shape
        down = F.max_pool3d(x, (1, 2, 2))
        omega = self.omega(x).flatten(2)                                 # [B,C',P]
        phi, g = self.phi(down).flatten(2), self.g(down).flatten(2)      # [B,C',P↓]
        y = (g @ phi.transpose(1, 2)) @ omega / (t * h * w)              # [B,C',P]
        x = x + self.w_z(y.view(b, -1, t, h, w))
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        frames = frames + self.aspp(frames)
        x = frames.view(b, t, c, h, w).transpose(1, 2)
        return self.squeeze(x)[:, :, 0]


# the heads each memory method needs (QDMN/QPM: QAM + prior enhancement; RDE: SAM)
METHOD_HEADS = {"every_k": (), "first_latest": (), "lfu": (), "qdmn": ("qam", "prior"),
                "qpm": ("qam", "prior"), "rde": ("sam",), "all": HEADS}
