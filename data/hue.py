"""The hue step of ColorJitter on float images [n, 3, H, W] in [0, 1], one shift per sample.

Two numerics (`--hue-impl`): "float" rotates the hue in float32 HSV, as torchvision's tensor
`adjust_hue`; "pil" is PIL's 8-bit HSV round trip, what torchvision's ColorJitter does to a PIL
image and so what the official pipelines (ColorJitter before ToTensor) train with.
"""

from __future__ import annotations

import torch
from torch import Tensor


def shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of x [n, 3, H, W] by shift [n] (fraction of a turn), as adjust_hue.

    Value (max) and chroma (max - min) are unchanged by a hue rotation, so every output channel is
    max - chroma * ramp(k) (the HSV -> RGB formula with s * v = chroma): no saturation division.
    """
    vmax, argmax = x.max(dim=1)
    chroma = vmax - x.amin(dim=1)
    r, g, b = x.unbind(dim=1)
    # hue in sixths of a turn, sector by the max channel: red first, then green, then blue (PIL's
    # tie-breaking); a grey pixel (chroma 0) gets any hue, its output is max whatever the ramp
    num = torch.where(argmax == 0, g - b, torch.where(argmax == 1, b - r, r - g))
    hue6 = num.div_(chroma.clamp(min=1e-12)).add_(2 * argmax.to(x.dtype))
    hue6 = hue6.add_(6 * shift.view(-1, 1, 1).to(x.dtype)).unsqueeze(1)  # [n, 1, H, W]
    # channel = max - chroma * clamp(min(k, 4 - k), 0, 1), k = (m + hue6) mod 6, m = 5, 3, 1
    m = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = (hue6 + m).remainder_(6)
    ramp = torch.minimum(k, 4 - k).clamp_(0.0, 1.0)
    return vmax.unsqueeze(1) - chroma.unsqueeze(1) * ramp


def shift_hue_pil(x: Tensor, shift: Tensor) -> Tensor:
    """PIL's 8-bit hue rotation (torchvision's ColorJitter on PIL images, the official pipelines):
    x [n, 3, H, W] in [0, 1] is rounded to uint8, converted with PIL's RGB -> HSV (8-bit hue,
    saturation, value), the hue byte is shifted by int(shift * 255) modulo 256 and converted back
    with PIL's HSV -> RGB; the result is on the uint8 grid."""
    q = x.mul(255).round_().clamp_(0, 255).to(torch.int32)
    vmax, argmax = q.max(dim=1)
    vmin = q.amin(dim=1)
    cr = (vmax - vmin).float()
    safe = cr.clamp(min=1.0)
    r, g, b = q.float().unbind(dim=1)
    vm = vmax.float()
    rc, gc, bc = (vm - r) / safe, (vm - g) / safe, (vm - b) / safe  # float32, as PIL
    rc, gc, bc = rc.double(), gc.double(), bc.double()  # 2.0 + rc - bc: double in C
    h = torch.where(argmax == 0, (bc - gc).float().double(),
                    torch.where(argmax == 1, 2.0 + rc - bc, 4.0 + gc - rc).float().double())
    h = torch.fmod(h / 6.0 + 1.0, 1.0).float()
    grey = cr == 0
    uh = torch.where(grey, 0, (h.double() * 255.0).to(torch.int32).clamp(0, 255))
    s = (cr / vm.clamp(min=1.0)).double()
    us = torch.where(grey, 0, (s * 255.0).to(torch.int32).clamp(0, 255))
    # torchvision: np_h += np.int32(hue_factor * 255).astype(np.uint8), wrapping
    uh = (uh + torch.trunc(shift.double() * 255).to(torch.int32).view(-1, 1, 1)).remainder(256)
    return hsv_to_rgb_pil(uh, us, vmax).to(x.dtype).div_(255)


def _round_half_up(t: Tensor) -> Tensor:
    return torch.floor(t + 0.5).clamp(0, 255)


def hsv_to_rgb_pil(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """PIL's hsv2rgb on int tensors [n, H, W] -> int [n, 3, H, W]."""
    h6 = h.double() * 6.0 / 255.0
    i = torch.floor(h6)
    f = (h6 - i).float().double()
    fs = (s.double() / 255.0).float().double()
    vd = v.double()
    p = _round_half_up(vd * (1.0 - fs))  # C's round(), in double
    qq = _round_half_up(vd * (1.0 - (fs * f).float().double()))  # fs * f: a float product
    t = _round_half_up(vd * (1.0 - fs * (1.0 - f)))
    i = i.long() % 6
    # sector i -> (r, g, b) picks among v, t, p, q
    table = torch.stack([vd, t, p, qq])  # 0 v, 1 t, 2 p, 3 q
    pick = torch.tensor([[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]],
                        device=h.device)
    idx = pick[i].permute(3, 0, 1, 2)  # [3, n, H, W]
    out = table.gather(0, idx).permute(1, 0, 2, 3)
    return torch.where((s == 0).unsqueeze(1), vd.unsqueeze(1).expand_as(out), out)


HUE_IMPLS = {"float": shift_hue, "pil": shift_hue_pil}
