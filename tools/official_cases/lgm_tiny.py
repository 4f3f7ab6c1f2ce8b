"""Dev tool (not run by the test suite or CI): a tiny random-weight LGM built by the OFFICIAL code (github
3DTopia/LGM, `core.models.LGM`), saved like the release (`model_fp16_fixrot.safetensors`: the model's own
`state_dict()`, float16), and reference cases computed by the official code on CPU in float32:

    python3 -m venv /work/wt/lgm-venv && /work/wt/lgm-venv/bin/pip install torch==2.13.0 numpy==2.4.6 safetensors==0.8.0
    /work/wt/lgm-venv/bin/python tools/official_cases/lgm_tiny.py --out tests/reference/lgm_tiny

Needs the mirror of github 3DTopia/LGM (the fetch tool). Deterministic: rewriting gives the same arrays.

Official code used unmodified: `core.options.Options`, `core.unet.UNet` (via `core.models.LGM`), `core.attention`
(its non-xformers path: xformers is absent), `LGM.forward_gaussians`, `LGM.prepare_default_rays` and `core.utils.get_rays`.
STAND-INS (imports the network part does not use; the official files stay untouched):
- `tyro` (options.py builds its CLI type at import): `subcommand_type_from_defaults` returns None.
- `kiui`: `cam.orbit_camera` (kiui 0.2.14 maths, the one of tools/official_cases/official_env.py), `op.safe_normalize`
  (x / sqrt(max(|x|^2, 1e-20)), as kiui), `lpips.LPIPS` (never built: lambda_lpips = 0).
- `roma` (utils.py imports it for camera jitter, training only) and `diff_gaussian_rasterization` (CUDA extension
  imported by core/gs.py): empty modules; `GaussianRenderer` (which allocates on "cuda" in __init__) is replaced by
  a no-op in core.models before LGM(opt) is built: only the network is computed here.
Render cameras (case `cameras`): the lines of the official infer.py (orbit_camera(elev, azi, radius, opengl=True),
`[:, :3, 1:3] *= -1`, `inverse(...).transpose`, `@ proj_matrix`) with proj_matrix as core/gs.py builds it.
Random init: tiny_release.randomize (every parameter; conv fan-in), then rounded to float16 and stored as float16.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import types

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import official_env  # noqa: E402

LGM_MIRROR = pathlib.Path("/work/.mirror/3DTopia+LGM/repo")
# Asymmetric like "big" (3 down blocks, 2 up blocks: the output grid is input_size / 2), attention where "big" has it
# (deep levels), every channel count a multiple of the official GroupNorm's 32 groups.
TINY_OPTIONS = {"input_size": 16, "down_channels": [32, 32, 32], "down_attention": [False, True, True],
                "mid_attention": True, "up_channels": [32, 32], "up_attention": [True, False], "splat_size": 8,
                "output_size": 16, "lambda_lpips": 0.0}
SEED = 20
BATCH = 2
ELEVATIONS = (0.0, -15.0)   # kiui convention; -15 = MV-RAG's default generation elevation 15 passed through
RENDER_AZIMUTHS = (0.0, 20.0, 90.0, 200.0)


def _standins(dest: pathlib.Path):
    modules = {
        "tyro/__init__.py": "from . import extras\n",
        "tyro/extras.py": "def subcommand_type_from_defaults(*args, **kwargs):\n    return None\n",
        "kiui/__init__.py": "from . import cam, op, lpips\n",
        "kiui/cam.py": official_env._KIUI_CAM,
        "kiui/op.py": "import torch\n\n\ndef safe_normalize(x, eps=1e-20):\n"
                      "    return x / torch.sqrt(torch.clamp(torch.sum(x * x, -1, keepdim=True), min=eps))\n",
        "kiui/lpips.py": "class LPIPS:\n    def __init__(self, *a, **k):\n"
                         "        raise RuntimeError('LPIPS stand-in: set lambda_lpips=0')\n",
        "roma/__init__.py": "",
        "diff_gaussian_rasterization/__init__.py": "GaussianRasterizationSettings = GaussianRasterizer = None\n",
    }
    for rel, text in modules.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)


def _export(mirror: pathlib.Path, dest: pathlib.Path) -> str:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(mirror), "archive", "HEAD", "core"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return subprocess.run(["git", "-C", str(mirror), "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


def _render_cameras(torch, orbit_camera, opt):
    """cam_view, cam_view_proj, cam_pos per (elevation, azimuth) exactly as the official infer.py loop."""
    tan_half_fov = np.tan(0.5 * np.deg2rad(opt.fovy))
    proj_matrix = torch.zeros(4, 4, dtype=torch.float32)
    proj_matrix[0, 0] = 1 / tan_half_fov
    proj_matrix[1, 1] = 1 / tan_half_fov
    proj_matrix[2, 2] = (opt.zfar + opt.znear) / (opt.zfar - opt.znear)
    proj_matrix[3, 2] = - (opt.zfar * opt.znear) / (opt.zfar - opt.znear)
    proj_matrix[2, 3] = 1
    views, view_projs, positions = [], [], []
    for elevation in ELEVATIONS:
        for azimuth in RENDER_AZIMUTHS:
            cam_poses = torch.from_numpy(orbit_camera(elevation, azimuth, radius=opt.cam_radius, opengl=True)).unsqueeze(0)
            cam_poses[:, :3, 1:3] *= -1
            cam_view = torch.inverse(cam_poses).transpose(1, 2)
            views.append(cam_view[0].numpy())
            view_projs.append((cam_view @ proj_matrix)[0].numpy())
            positions.append((- cam_poses[:, :3, 3])[0].numpy())
    return np.stack(views), np.stack(view_projs), np.stack(positions), proj_matrix.numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--mirror", type=pathlib.Path, default=LGM_MIRROR)
    args = parser.parse_args()

    import torch
    from safetensors.numpy import save_file
    import tiny_release

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        commit = _export(args.mirror, tmp / "official")
        _standins(tmp / "standins")
        sys.path[:0] = [str(tmp / "official"), str(tmp / "standins")]
        from core import models
        from core.options import Options
        from kiui.cam import orbit_camera

        models.GaussianRenderer = lambda opt: None  # STAND-IN: the renderer needs CUDA; only the network runs here
        opt = Options(**{k: tuple(v) if isinstance(v, list) else v for k, v in TINY_OPTIONS.items()})
        model = models.LGM(opt).eval()
        tiny_release.randomize(model, SEED, conv_fan_in=True)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())  # the stored fp16 values, computed in fp32

        rng = np.random.default_rng(SEED)
        size = opt.input_size
        images = rng.standard_normal((BATCH, 4, 3, size, size)).astype(np.float32)  # ImageNet-normalised range
        cases = {"images": images}
        with torch.no_grad():
            for i, elevation in enumerate(ELEVATIONS):
                rays = model.prepare_default_rays("cpu", elevation=elevation)  # [4, 6, h, w]
                inputs = torch.cat([torch.from_numpy(images), rays.unsqueeze(0).expand(BATCH, -1, -1, -1, -1)], dim=2)
                raw = model.conv(model.unet(inputs.view(BATCH * 4, 9, size, size)))
                raw = raw.reshape(BATCH, 4, 14, opt.splat_size, opt.splat_size).permute(0, 1, 3, 4, 2)
                cases[f"rays_{i}"] = rays.numpy()
                cases[f"raw_{i}"] = raw.reshape(BATCH, -1, 14).numpy()
                cases[f"gaussians_{i}"] = model.forward_gaussians(inputs).numpy()
        cases["elevations"] = np.array(ELEVATIONS, np.float32)
        cases["render_azimuths"] = np.array(RENDER_AZIMUTHS, np.float32)
        (cases["cam_view"], cases["cam_view_proj"], cases["cam_pos"],
         cases["proj_matrix"]) = _render_cameras(torch, orbit_camera, opt)

        args.out.mkdir(parents=True, exist_ok=True)
        state = {k: v.half().numpy() for k, v in model.state_dict().items()}
        save_file(state, str(args.out / "model_fp16.safetensors"))
        np.savez_compressed(args.out / "cases.npz", **cases)
        options = {k: getattr(opt, k) for k in ("input_size", "down_channels", "down_attention", "mid_attention",
                                                 "up_channels", "up_attention", "splat_size", "output_size", "fovy",
                                                 "znear", "zfar", "cam_radius")}
        meta = {"official_commit": commit, "seed": SEED, "options": options,
                "num_parameters": int(sum(p.numel() for p in model.parameters()))}
        (args.out / "lgm_tiny.json").write_text(json.dumps(meta, indent=2, default=list) + "\n")

        # Key manifest of the released "big" network (no weights: meta tensors), for the converter's key test.
        from core.options import config_defaults
        big = config_defaults["big"]
        big.lambda_lpips = 0.0
        with torch.device("meta"):
            big_model = models.LGM(big)
        manifest = {k: list(v.shape) for k, v in big_model.state_dict().items()}
        (args.out / "big_manifest.json").write_text(json.dumps(manifest, indent=0) + "\n")
        print(f"wrote {args.out} (official {commit}, {meta['num_parameters']} params; big: "
              f"{sum(int(np.prod(s)) for s in manifest.values())} params, {len(manifest)} keys)")


if __name__ == "__main__":
    main()
