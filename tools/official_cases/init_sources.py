"""Dev tool (not part of the test suite, not run in CI): tiny random-weight MVDream and ImageDream checkpoints in their
OFFICIAL single-file (ldm/sgm) layout, and reference cases computed by the OFFICIAL code on them, for the init
converter (`mvrag convert --mvdream A --imagedream B`, mvrag_jax/convert/init_sources.py).

    /work/init-convertenv/bin/python tools/official_cases/init_sources.py --out tests/reference_configs

writes tests/reference_configs/mvdream/ and tests/reference_configs/imagedream/ (checkpoint .safetensors, the
official-format YAML config the checkpoint was built from, cases/*.npz, README.md); the run is deterministic (seeded
numpy noise, fp32 on one thread), so it rewrites the same arrays. Needs the mirrors of github bytedance/MVDream and
bytedance/ImageDream (the fetch tool) and a torch venv:

    python3 -m venv /work/init-convertenv
    /work/init-convertenv/bin/pip install torch==2.13.0 diffusers==0.42.1 transformers==5.24.0 omegaconf einops \
        safetensors numpy==2.4.6 pyyaml "setuptools<70" torchvision==0.28.0    # setuptools: MVDream's pkg_resources
    /work/init-convertenv/bin/pip install --no-deps open-clip-torch==2.7.0 ftfy regex timm  # MVDream's open_clip pin

(open_clip 3.x runs its text transformer batch-first, which the official `encode_with_transformer`, written for
2.7's sequence-first resblocks, does not expect.)

How the checkpoints are made (everything official except the three points marked STAND-IN):
- MVDream: `mvdream.ldm.interface.LatentDiffusionInterface` built by `instantiate_from_config` from
  mvdream.yaml (the layout of mvdream/configs/sd-v2-base.yaml at tiny sizes); its `state_dict()` is the on-disk
  layout of sd-v2.1-base-4view.pt (`model.diffusion_model.`, `first_stage_model.`, `cond_stage_model.model.`, the
  schedule buffers), which model_zoo.build_model loads with strict `load_state_dict`.
- ImageDream: `imagedream.ldm.interface.LatentDiffusionInterface` from imagedream.yaml (the layout of
  sd_v2_base_ipmv.yaml: `model.diffusion_model.` incl. `image_embed.` and every `attn2.to_k_ip/to_v_ip`,
  `vae_model.`, `clip_model.model.`).
- STAND-IN 1: the cond/clip stage is the official FrozenOpenCLIPEmbedder with `__init__` building a tiny open_clip
  `CLIP` instead of downloading ViT-H-14 laion2b weights (`_tiny_openclip`); forward code unchanged.
- STAND-IN 2: ImageDream's MultiViewUNetModel hard-codes its resampler at full size (embedding_dim 1280, depth 4,
  heads 12); the tiny model replaces `image_embed` with the SAME official class `adaptors.Resampler` at tiny kwargs
  (embedding_dim 48, so that tests/reference/tiny_release's CLIP vision tower feeds it).
- STAND-IN 3: xformers.ops.memory_efficient_attention = exact softmax attention (official_env.py).
Random init: tiny_release.randomize (every parameter, zero-initialised ones too), then rounded to float16 and stored
as float16 (the converter upcasts to float32; the cases are computed with the rounded weights in float32).
"""

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import official_env  # noqa: E402

MVDREAM_MIRROR = pathlib.Path("/work/.mirror/bytedance+MVDream/repo")
IMAGEDREAM_MIRROR = pathlib.Path("/work/.mirror/bytedance+ImageDream/repo")

# Tiny sizes. The vocabulary and the vision tower (resampler embedding_dim 48) match tests/reference/tiny_release,
# whose CLIP vision tower, DINOv2, tokenizer and scheduler the init converter takes from `--release`.
UNET = {"image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32, "attention_resolutions": [1, 2],
        "num_res_blocks": 1, "channel_mult": [1, 1], "num_head_channels": 16, "use_spatial_transformer": True,
        "use_linear_in_transformer": True, "transformer_depth": 1, "context_dim": 64, "use_checkpoint": False,
        "legacy": False, "camera_dim": 16}
# open_clip 2.7 (MVDream's pin) fixes the text MLP at 4 x width; heads = width / 64, open_clip's head width.
IP = {"with_ip": True, "ip_dim": 4, "ip_mode": "local_resample"}
TINY_RESAMPLER = {"dim": 64, "depth": 2, "dim_head": 64, "heads": 2, "num_queries": 4, "embedding_dim": 48,
                  "output_dim": 64, "ff_mult": 4}  # dim = output_dim = context_dim, num_queries = ip_dim, as official
DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": [1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
TEXT = {"context_length": 77, "vocab_size": 574, "width": 64, "heads": 1, "layers": 3}
VISION = {"image_size": 32, "patch_size": 8, "width": 48, "head_width": 12, "layers": 2, "mlp_ratio": 2.0}
SCHEDULE = {"linear_start": 0.00085, "linear_end": 0.0120, "timesteps": 1000, "scale_factor": 0.18215,
            "parameterization": "eps"}
BATCH, VIEWS, TOKENS, IMAGE_TOKENS = 2, 4, 77, 17


def _model_config(package: str) -> dict:
    """The official YAML's `model` block at tiny sizes (ImageDream renames the clip/vae stages and adds ip)."""
    interface = f"{package}.ldm.interface.LatentDiffusionInterface"
    unet = {"target": f"{package}.ldm.modules.diffusionmodules.openaimodel.MultiViewUNetModel",
            "params": dict(UNET, **(IP if package == "imagedream" else {}))}
    vae = {"target": f"{package}.ldm.models.autoencoder.AutoencoderKL",
           "params": {"embed_dim": 4, "monitor": "val/rec_loss", "ddconfig": DDCONFIG,
                      "lossconfig": {"target": "torch.nn.Identity"}}}
    clip = {"target": f"init_sources_standins.Tiny{package.capitalize()}OpenCLIPEmbedder",
            "params": {"freeze": True, "layer": "penultimate", **({"ip_mode": "local_resample"}
                                                                  if package == "imagedream" else {})}}
    stages = ({"unet_config": unet, "first_stage_config": vae, "cond_stage_config": clip} if package == "mvdream"
              else {"unet_config": unet, "vae_config": vae, "clip_config": clip})
    return {"model": {"target": interface, "params": dict(SCHEDULE, **stages)}}


_STANDINS = '''
import open_clip
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from mvdream.ldm.modules.encoders.modules import FrozenOpenCLIPEmbedder as _MV
from imagedream.ldm.modules.encoders.modules import FrozenOpenCLIPEmbedder as _ID

TEXT = {text}
VISION = {vision}


def _tiny_openclip():
    return CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(**VISION), text_cfg=CLIPTextCfg(**TEXT), quick_gelu=False)


class TinyMvdreamOpenCLIPEmbedder(_MV):
    """STAND-IN 1: the official embedder around a tiny random open_clip CLIP (no download)."""
    def __init__(self, device="cpu", max_length=77, freeze=True, layer="last"):
        super(_MV, self).__init__()
        model = _tiny_openclip()
        del model.visual
        self.model, self.device, self.max_length = model, device, max_length
        if freeze:
            self.freeze()
        self.layer = layer
        self.layer_idx = {{"last": 0, "penultimate": 1}}[layer]


class TinyImagedreamOpenCLIPEmbedder(_ID):
    """STAND-IN 1 (ImageDream keeps the visual tower when ip_mode is set)."""
    def __init__(self, device="cpu", max_length=77, freeze=True, layer="last", ip_mode=None):
        super(_ID, self).__init__()
        model = _tiny_openclip()
        if ip_mode is None:
            del model.visual
        self.model, self.preprocess, self.device, self.max_length = model, None, device, max_length
        self.ip_mode = ip_mode
        if freeze:
            self.freeze()
        self.layer = layer
        self.layer_idx = {{"last": 0, "penultimate": 1}}[layer]
'''


def _export(mirror: pathlib.Path, subdir: str, dest: pathlib.Path) -> str:
    if not (mirror / "HEAD").exists():
        raise SystemExit(f"init_sources: error: mirror {mirror} not found; fetch the official repository first")
    archive = subprocess.run(["git", "-C", str(mirror), "archive", "HEAD", subdir], check=True,
                             capture_output=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return subprocess.run(["git", "-C", str(mirror), "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def prepare(work: pathlib.Path) -> dict[str, str]:
    """Export both official packages, install the stand-ins, deterministic fp32 torch on one thread."""
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    commits = {"mvdream": _export(MVDREAM_MIRROR, "mvdream", work / "mvdream_src"),
               "imagedream": _export(IMAGEDREAM_MIRROR, "extern/ImageDream/imagedream", work / "imagedream_src")}
    official_env._write_standins(work / "standins")
    (work / "standins" / "init_sources_standins.py").write_text(
        _STANDINS.format(text=json.dumps(TEXT), vision=json.dumps(VISION)))
    sys.path[:0] = [str(work / "mvdream_src"), str(work / "imagedream_src" / "extern" / "ImageDream"),
                    str(work / "standins")]
    import torch
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    return commits


def _randomize_fp16(module, seed: int):
    """tiny_release.randomize, then every parameter rounded to float16 (the precision it is stored in)."""
    import torch
    from tiny_release import randomize
    randomize(module, seed, conv_fan_in=True)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(param.half().float())


def build(package: str, seed: int):
    """The official LatentDiffusionInterface of `package` at tiny sizes, randomised."""
    from omegaconf import OmegaConf
    util = __import__(f"{package}.ldm.util", fromlist=["instantiate_from_config"])
    model = util.instantiate_from_config(OmegaConf.create(_model_config(package)).model)
    if package == "imagedream":  # STAND-IN 2
        from imagedream.ldm.modules.diffusionmodules.adaptors import Resampler
        model.model.diffusion_model.image_embed = Resampler(**TINY_RESAMPLER)
    _randomize_fp16(model, seed)
    return model.eval()


def save_checkpoint(model, path: pathlib.Path):
    """The interface's state_dict (what model_zoo.build_model loads), parameters as float16, as safetensors."""
    from safetensors.torch import save_file
    state = {k: (v.half() if v.is_floating_point() and not _is_schedule_buffer(k) else v).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def _is_schedule_buffer(key: str) -> bool:
    return "." not in key  # betas, alphas_cumprod, ... sit at the interface's top level


def _inputs(rng: np.random.Generator, with_ip: bool) -> dict[str, np.ndarray]:
    """One 4-view UNet call for BATCH objects; rows = object * views (camera per view, the same text per object)."""
    from mvdream.camera_utils import get_camera
    rows = BATCH * VIEWS
    camera = get_camera(VIEWS, elevation=15.0, azimuth_start=0).numpy().astype(np.float32)  # [views, 16]
    context = rng.standard_normal((BATCH, TOKENS, UNET["context_dim"]), dtype=np.float32)
    case = {"x": rng.standard_normal((rows, 4, UNET["image_size"], UNET["image_size"]), dtype=np.float32),
            "timesteps": np.repeat(np.array([981.0, 441.0], np.float32), VIEWS),
            "context": np.repeat(context, VIEWS, axis=0), "camera": np.tile(camera, (BATCH, 1)),
            "num_frames": np.int64(VIEWS)}
    if with_ip:  # CLIP penultimate features of one reference image per object, repeated per view
        ip = rng.standard_normal((BATCH, IMAGE_TOKENS, TINY_RESAMPLER["embedding_dim"]), dtype=np.float32)
        case["ip"] = np.repeat(ip, VIEWS, axis=0)
    return case


def unet_case(model, with_ip: bool, seed: int) -> dict[str, np.ndarray]:
    """The official UNet forward in 4-view mode: text only (MVDream), or with image tokens `ip` and no `ip_img`
    (ImageDream's image-prompt branch without its 5th reference-image view, which MV-RAG does not use)."""
    import torch
    case = _inputs(np.random.default_rng(seed), with_ip)
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in case.items() if k != "num_frames"}
    kwargs = {"ip": t["ip"]} if with_ip else {}
    with torch.no_grad():
        eps = model.model.diffusion_model(t["x"], t["timesteps"], context=t["context"], camera=t["camera"],
                                          num_frames=VIEWS, **kwargs)
    case["eps"] = eps.numpy()
    return case


def vae_case(model, seed: int) -> dict[str, np.ndarray]:
    """ldm AutoencoderKL: encode (posterior mean/logvar) and decode (first_stage_model)."""
    import torch
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1, 1, (2, 3, DDCONFIG["resolution"], DDCONFIG["resolution"])).astype(np.float32)
    z = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
    vae = model.first_stage_model
    with torch.no_grad():
        posterior = vae.encode(torch.from_numpy(image))
        decoded = vae.decode(torch.from_numpy(z))
    return {"image": image, "posterior_mean": posterior.mean.numpy(), "posterior_logvar": posterior.logvar.numpy(),
            "z": z, "decoded": decoded.numpy()}


def text_case(model, seed: int) -> dict[str, np.ndarray]:
    """FrozenOpenCLIPEmbedder.encode_with_transformer (layer 'penultimate') on token ids of the tiny vocab."""
    import torch
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, TEXT["vocab_size"] - 2, (2, TEXT["context_length"])).astype(np.int64)
    ids[:, 0], ids[0, 9:], ids[1, 30:] = TEXT["vocab_size"] - 2, 0, 0  # BOS, then padding after the prompt
    ids[0, 8], ids[1, 29] = TEXT["vocab_size"] - 1, TEXT["vocab_size"] - 1  # EOS
    with torch.no_grad():
        z = model.cond_stage_model.encode_with_transformer(torch.from_numpy(ids))
    return {"input_ids": ids, "last_hidden_state": z.numpy()}


def write(out: pathlib.Path, name: str, model, cases: dict, commit: str, ckpt_name: str):
    import yaml
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "cases").mkdir(parents=True)
    save_checkpoint(model, folder / ckpt_name)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(_model_config(name), sort_keys=False))
    for case, arrays in cases.items():
        np.savez_compressed(folder / "cases" / f"{case}.npz", **arrays)
    lines = [f"# Tiny {name} checkpoint and official reference cases", "",
             f"Written by tools/official_cases/init_sources.py from the OFFICIAL code (github bytedance/"
             f"{'MVDream' if name == 'mvdream' else 'ImageDream'} @ {commit}); see that tool's docstring for how "
             "the checkpoint is made and its stand-ins. float32 on CPU, torch 2.13.0.", "",
             f"- `{ckpt_name}`: the interface's state_dict (official single-file layout), parameters float16, "
             "schedule buffers float32.",
             f"- `{name}.yaml`: the official-format config it was built from (pass as `--{name}-config`).", ""]
    for case, arrays in cases.items():
        lines += [f"## cases/{case}.npz", "", "| array | shape | dtype |", "|---|---|---|"]
        lines += [f"| {k} | {tuple(np.shape(v))} | {np.asarray(v).dtype} |" for k, v in arrays.items()]
        lines.append("")
    (folder / "README.md").write_text("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, required=True, help="writes OUT/mvdream and OUT/imagedream")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        commits = prepare(pathlib.Path(tmp))
        mvdream = build("mvdream", seed=11)
        write(args.out, "mvdream", mvdream, {"mvdream_unet_forward": unet_case(mvdream, False, 1),
                                             "mvdream_vae": vae_case(mvdream, 2),
                                             "mvdream_clip_text": text_case(mvdream, 3)},
              commits["mvdream"], "sd-v2.1-base-4view-tiny.safetensors")
        imagedream = build("imagedream", seed=12)
        write(args.out, "imagedream", imagedream, {"imagedream_unet_forward_ip": unet_case(imagedream, True, 4)},
              commits["imagedream"], "sd-v2.1-base-4view-ipmv-tiny.safetensors")
    print(f"wrote {args.out}/mvdream and {args.out}/imagedream")


if __name__ == "__main__":
    main()
