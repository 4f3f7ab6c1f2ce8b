"""Make the OFFICIAL MV-RAG code importable on a CPU-only torch venv, with the stand-ins listed in
tests/reference/cases/README.md ("Harness patches / stand-ins"). The official source files stay unmodified: they are
exported from the mirror into a temporary folder, never copied into this repository.

Stand-ins and patches (the same as for config A):
1. `xformers.ops.memory_efficient_attention(q, k, v)` = exact softmax(q k^T / sqrt(K)) v on [B, M, H, K] tensors
   (and on the [B * H, M, K] tensors MVDream/ImageDream pass, for tools/official_cases/init_sources.py).
2. `kiui.cam.orbit_camera` in numpy (identical to kiui 0.2.14; only the camera maths is needed).
3. diffusers' `maybe_raise_or_warn` is skipped for `resampler` (a plain nn.Module it cannot type-check).
4. torchvision 0.28 (the match of torch 2.13) is a CUDA build whose custom-op registrations cannot load on CPU torch;
   `torchvision._meta_registrations` is replaced by an empty module at import time (only transforms are used).
"""

import pathlib
import subprocess
import sys
import types

DEFAULT_MIRROR = pathlib.Path("/work/.mirror/yosefdayani+MV-RAG/repo")

_XFORMERS_OPS = '''
import torch


def memory_efficient_attention(q, k, v, attn_bias=None, op=None):
    """Exact attention on [B, M, H, K] (or, as MVDream/ImageDream call it, [B * H, M, K]) tensors (the maths
    xformers approximates with a fused kernel)."""
    if attn_bias is not None:
        raise NotImplementedError("stand-in supports attn_bias=None only (all the official code uses)")
    if q.dim() == 3:  # [B * H, M, K]
        weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        return weights @ v
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, M, K]
    weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ v).transpose(1, 2)  # [B, M, H, K]
'''

_KIUI_CAM = '''
import numpy as np


def _safe_normalize(x, eps=1e-20):
    return x / np.sqrt(np.maximum(np.sum(x * x, -1, keepdims=True), eps))


def _look_at(campos, target, opengl=True):
    # kiui 0.2.14 look_at: camera forward = campos - target in the OpenGL convention
    if not opengl:
        forward_vector = _safe_normalize(target - campos)
        up_vector = np.array([0, -1, 0], dtype=np.float32)
    else:
        forward_vector = _safe_normalize(campos - target)
        up_vector = np.array([0, 1, 0], dtype=np.float32)
    right_vector = _safe_normalize(np.cross(up_vector, forward_vector))
    up_vector = _safe_normalize(np.cross(forward_vector, right_vector))
    return np.stack([right_vector, up_vector, forward_vector], axis=1)


def orbit_camera(elevation, azimuth, radius=1, is_degree=True, target=None, opengl=True):
    if is_degree:
        elevation = np.deg2rad(elevation)
        azimuth = np.deg2rad(azimuth)
    x = radius * np.cos(elevation) * np.sin(azimuth)
    y = - radius * np.sin(elevation)
    z = radius * np.cos(elevation) * np.cos(azimuth)
    if target is None:
        target = np.zeros([3], dtype=np.float32)
    campos = np.array([x, y, z]) + target
    T = np.eye(4, dtype=np.float32)
    T[:3, :3] = _look_at(campos, target, opengl)
    T[:3, 3] = campos
    return T
'''


def export_official(mirror: pathlib.Path, dest: pathlib.Path) -> str:
    """`git archive HEAD` of the official repository into `dest`; returns the commit id."""
    if not (mirror / "HEAD").exists():
        raise FileNotFoundError(f"official MV-RAG mirror {mirror} not found; pass --mirror (a bare git clone)")
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(mirror), "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return subprocess.run(["git", "-C", str(mirror), "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


def _write_standins(dest: pathlib.Path):
    (dest / "xformers").mkdir(parents=True, exist_ok=True)
    (dest / "xformers" / "__init__.py").write_text("from . import ops\n")
    (dest / "xformers" / "ops.py").write_text(_XFORMERS_OPS)
    (dest / "kiui").mkdir(parents=True, exist_ok=True)
    (dest / "kiui" / "__init__.py").write_text("from . import cam\n")
    (dest / "kiui" / "cam.py").write_text(_KIUI_CAM)


def _patch_diffusers():
    from diffusers.pipelines import pipeline_loading_utils, pipeline_utils
    original = pipeline_loading_utils.maybe_raise_or_warn

    def maybe_raise_or_warn(library_name, library, class_name, importable_classes, passed_class_obj, name,
                            is_pipeline_module):
        if name == "resampler":  # plain nn.Module: diffusers 0.42 crashes on issubclass(x, None) here
            return
        return original(library_name, library, class_name, importable_classes, passed_class_obj, name,
                        is_pipeline_module)

    pipeline_loading_utils.maybe_raise_or_warn = maybe_raise_or_warn
    pipeline_utils.maybe_raise_or_warn = maybe_raise_or_warn


def prepare(work_dir: pathlib.Path, mirror: pathlib.Path = DEFAULT_MIRROR,
            extra_site: pathlib.Path | None = None) -> str:
    """Export the official code into `work_dir`, install the stand-ins and patches, fix torch to deterministic fp32
    on one CPU thread. Returns the official commit id. Call before importing any official module."""
    missing = []
    for name in ("torch", "diffusers", "transformers", "einops", "safetensors"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise SystemExit(f"make_cases: error: {', '.join(missing)} not importable; run with the torch venv "
                         "(/work/torchenv/bin/python: torch 2.13 CPU, diffusers 0.42.1, transformers 5.24.0)")
    if extra_site is not None and extra_site.is_dir():
        sys.path.insert(0, str(extra_site))
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    try:
        import torchvision.transforms.v2  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"make_cases: error: torchvision not importable ({e}); install it aside with "
                         "`pip install --no-deps --target ~/.cache/mvrag_official_site torchvision==0.28.0` "
                         "and pass --extra_site ~/.cache/mvrag_official_site") from e
    commit = export_official(mirror, work_dir / "official")
    _write_standins(work_dir / "standins")
    sys.path[:0] = [str(work_dir / "official"), str(work_dir / "standins")]
    import torch
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    _patch_diffusers()
    return commit
