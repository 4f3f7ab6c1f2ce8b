"""A PyTorch build of the GUIE instance-retrieval architecture, written from the authors' sources
(open_clip_280_overlap/src/open_clip/model.py `VisualTransformer`, `ResidualAttentionBlock` with
nn.MultiheadAttention, and the training scripts' `add_layer_model`): module names = the released state-dict keys,
so `load_state_dict(strict=True)` checks the layout. Needs torch; used by make_ir_fixture.py and test_ir.py.
"""

from collections import OrderedDict

import torch
from torch import nn


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))

    def forward(self, x):  # x: [L, N, D] as OpenCLIP
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x):
        for block in self.resblocks:
            x = block(x)
        return x


class OverlapVisualTransformer(nn.Module):
    """open_clip_280_overlap's VisualTransformer: conv1 kernel patch, stride patch - 2."""

    def __init__(self, image_size: int, patch: int, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        grid = (image_size - 2) // (patch - 2)
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch - 2, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x):
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class AddLayerModel(nn.Module):
    """The training scripts' wrapper at inference: backbone -> (dropout: identity in eval) -> fc1; fc2 (CosFace
    head over the training classes) is kept as a bare weight so the state dict has its key."""

    def __init__(self, backbone: nn.Module, projection_dim: int, embedding_dim: int, classes: int):
        super().__init__()
        self.backbone = backbone
        self.fc1 = nn.Linear(projection_dim, embedding_dim)
        self.fc2 = nn.Module()
        self.fc2.weight = nn.Parameter(torch.randn(classes, embedding_dim))

    def forward(self, x):
        projection = self.backbone(x)
        return projection, self.fc1(projection)
