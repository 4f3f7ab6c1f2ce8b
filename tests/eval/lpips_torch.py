"""A PyTorch build of LPIPS v0.1 (net='vgg'), written from the lpips package (pretrained_networks.vgg16 slices,
ScalingLayer, NetLinLayer, normalize_tensor, spatial_average) over torchvision's VGG16 `features` layout, with
widths divided by `divisor` for tiny models. Module names = the released state-dict keys (`features.<i>`,
`lin<k>.model.1`). Needs torch; used by make_lpips_fixture.py and test_lpips.py.
"""

import torch
from torch import nn

CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
TAPS = (3, 8, 15, 22, 29)  # relu1_2 ... relu5_3: the ends of lpips' slice1..slice5


def vgg16_features(divisor: int) -> nn.Sequential:
    layers, cin = [], 3
    for item in CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, item // divisor, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            cin = item // divisor
    return nn.Sequential(*layers)


class NetLinLayer(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(cin, 1, 1, stride=1, padding=0, bias=False))

    def forward(self, x):
        return self.model(x)


class LPIPS(nn.Module):
    def __init__(self, divisor: int = 1):
        super().__init__()
        self.features = vgg16_features(divisor)
        widths = [64, 128, 256, 512, 512]
        for k, w in enumerate(widths):
            setattr(self, f"lin{k}", NetLinLayer(w // divisor))
        self.register_buffer("shift", torch.tensor([-.030, -.088, -.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([.458, .448, .450])[None, :, None, None])

    def taps(self, x):
        out = []
        x = (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(x)
            if i == TAPS[-1]:
                break
        return out

    def forward(self, a, b):  # NCHW in [-1, 1]
        total = 0
        for k, (fa, fb) in enumerate(zip(self.taps(a), self.taps(b))):
            na = fa / (torch.sqrt(torch.sum(fa ** 2, dim=1, keepdim=True)) + 1e-10)
            nb = fb / (torch.sqrt(torch.sum(fb ** 2, dim=1, keepdim=True)) + 1e-10)
            total = total + getattr(self, f"lin{k}")((na - nb) ** 2).mean([2, 3], keepdim=True)
        return total.reshape(-1)
