"""Compute the reference cases with the OFFICIAL MV-RAG pipeline (same files, array names and layouts as
tests/reference/cases; see its README.md for what every array means). Must run after official_env.prepare().

Case inputs (random arrays, retrieved images, prompts, camera params) come either from `make_inputs(cfg)` (seeded
numpy) or from an existing case set (`load_inputs(dir)`), so a set can be recomputed from its own inputs to validate
this tool.
"""

import contextlib
import functools
import json
import os
import pathlib

import numpy as np

# Arrays of each case that are inputs (everything else in a case file is computed by the official code).
INPUT_ARRAYS = {
    "camera": ("params_",),
    "clip_text": ("prompts", "encode_prompt_prompt"),
    "clip_vision": ("pixel_values", "ret_image_"),
    "resampler": ("x",),
    "unet_forward_text": ("x", "timesteps", "context", "camera", "num_frames", "scale"),
    "unet_forward_ip": ("x", "timesteps", "context", "camera", "num_frames", "images_tokens", "scale"),
    "vae": ("image", "z"),
    "dinov2": ("pixel_values", "gen_images", "ret_image_"),
    "ddim_sample": ("initial_latents", "guidance_scale", "eta", "num_inference_steps", "scale", "num_frames"),
    "pipeline_e2e": ("args_json", "ret_image_"),
}
CASE_NAMES = tuple(INPUT_ARRAYS)


def _is_input(case: str, key: str) -> bool:
    return any(key == p or (p.endswith("_") and key.startswith(p)) for p in INPUT_ARRAYS[case])


def load_inputs(cases_dir: pathlib.Path) -> dict[str, dict[str, np.ndarray]]:
    inputs = {}
    for case in CASE_NAMES:
        with np.load(cases_dir / f"{case}.npz") as data:
            inputs[case] = {k: data[k] for k in data.files if _is_input(case, k)}
    return inputs


def _vae_factor(cfg) -> int:
    return 2 ** (len(cfg["vae"]["block_out_channels"]) - 1)


def _clip_tokens(cfg) -> int:
    return (cfg["clip_vision"]["image_size"] // cfg["clip_vision"]["patch_size"]) ** 2 + 1


def make_inputs(cfg: dict) -> dict[str, dict[str, np.ndarray]]:
    """Seeded random inputs for every case of configuration `cfg`."""
    rng = np.random.default_rng(cfg["seed"])
    views, size, pipe, ddim = cfg["num_frames"], cfg["image_size"], cfg["pipe"], cfg["ddim"]
    latent = size // _vae_factor(cfg)
    ctx, queries = cfg["unet"]["context_dim"], cfg["resampler"]["num_queries"]

    def images(sizes):
        return {f"ret_image_{i}": rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for i, (h, w) in enumerate(sizes)}

    retrieved = images(cfg["ret_image_sizes"])
    cameras = {f"params_{i}": np.array(p, np.int64) for i, p in enumerate(cfg["camera_params"])}
    cameras["params_noblender"] = np.array(cfg["camera_params"][0], np.int64)
    unet = {"x": rng.standard_normal((2 * views, 4, latent, latent)).astype(np.float32),
            "timesteps": np.repeat(np.array(cfg["unet_timesteps"], np.float32), views),
            "context": rng.standard_normal((2 * views, 77, ctx)).astype(np.float32),
            "camera": None,  # filled from the official get_camera in compute_cases
            "num_frames": np.int64(views)}
    crop = cfg["dinov2_proc"]["crop"]
    e2e_args = {"prompt": pipe["prompt"], "height": size, "width": size, "elevation": pipe["elevation"],
                "azimuth_start": pipe["azimuth_start"], "num_inference_steps": pipe["num_inference_steps"],
                "num_initial_steps": pipe["num_initial_steps"], "guidance_scale": pipe["guidance_scale"],
                "negative_prompt": "", "eta": pipe["eta"], "output_type": "numpy", "num_frames": views,
                "seed": pipe["seed"], "device": "cpu", "k": cfg["k"]}
    inputs = {
        "camera": cameras,
        "clip_text": {"prompts": np.array(cfg["prompts"]), "encode_prompt_prompt": np.array(pipe["prompt"])},
        "clip_vision": {"pixel_values": rng.standard_normal(
            (3, 3, cfg["clip_vision"]["image_size"], cfg["clip_vision"]["image_size"])).astype(np.float32),
            **retrieved},
        "resampler": {"x": rng.standard_normal(
            (3, _clip_tokens(cfg), cfg["resampler"]["embedding_dim"])).astype(np.float32)},
        "unet_forward_text": {**unet, "scale": np.float32(1.0)},
        "unet_forward_ip": {**unet, "images_tokens": rng.standard_normal(
            (2 * views, cfg["k"] * queries, ctx)).astype(np.float32), "scale": np.float32(cfg["unet_ip_scale"])},
        "vae": {"image": rng.uniform(-1, 1, (2, 3, size, size)).astype(np.float32),
                "z": rng.standard_normal((2, 4, latent, latent)).astype(np.float32)},
        "dinov2": {"pixel_values": rng.standard_normal((2, 3, crop, crop)).astype(np.float32),
                   "gen_images": rng.random((views, 3, size, size)).astype(np.float32), **retrieved},
        "ddim_sample": {"initial_latents": rng.standard_normal((views, 4, latent, latent)).astype(np.float32),
                        "guidance_scale": np.float32(ddim["guidance_scale"]), "eta": np.float32(0.0),
                        "num_inference_steps": np.int64(ddim["steps"]), "scale": np.float32(ddim["scale"]),
                        "num_frames": np.int64(views)},
        "pipeline_e2e": {"args_json": np.array(json.dumps(e2e_args)), **images(cfg["ret_image_sizes"])},
    }
    return inputs


@contextlib.contextmanager
def _cwd(path: pathlib.Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def load_pipeline(release: pathlib.Path):
    """MVRAGPipeline of `release` in float32 on CPU, processors on the PIL backend (README patches 3-5)."""
    import torch
    from modules.resampler import Resampler
    from pipeline_mvrag import MVRAGPipeline
    from transformers import BitImageProcessorPil, CLIPImageProcessorPil
    release = release.resolve()
    config = json.loads((release / "resampler" / "config.json").read_text())
    with _cwd(release):  # f_score.SimilarityModel loads the hub id "facebook/dinov2-base" by name
        resampler = Resampler.from_pretrained(str(release / "resampler"), torch_dtype=torch.float32, **config)
        pipe = MVRAGPipeline.from_pretrained(str(release), torch_dtype=torch.float32, resampler=resampler)
        pipe.feature_extractor = CLIPImageProcessorPil.from_pretrained(str(release / "feature_extractor"))
        pipe.similarity_model.processor = BitImageProcessorPil.from_pretrained("facebook/dinov2-base")
    pipe.similarity_model.model.float()
    for name, module in [("unet", pipe.unet), ("vae", pipe.vae), ("text_encoder", pipe.text_encoder),
                         ("image_encoder", pipe.image_encoder), ("resampler", pipe.resampler),
                         ("dinov2", pipe.similarity_model.model)]:
        dtypes = {p.dtype for p in module.parameters()}
        if dtypes != {torch.float32}:
            raise SystemExit(f"make_cases: error: {name} loaded as {dtypes}, expected float32")
        module.eval()
    return pipe


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _pil(images: dict[str, np.ndarray]):
    from PIL import Image
    keys = sorted((k for k in images if k.startswith("ret_image_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    return [Image.fromarray(images[k]) for k in keys]


def _process_prompt(prompt: str) -> str:
    return (prompt[:-1] if prompt.endswith(".") else prompt) + ", 3d asset"  # the official _encode_prompt rule


def case_camera(pipe, inp):
    import utils
    out = {}
    for key in sorted(k for k in inp if k.startswith("params_")):
        tag = key[len("params_"):]
        frames, elevation, azimuth = (int(v) for v in inp[key])
        out[f"camera_{tag}"] = _np(utils.get_camera(frames, elevation=elevation, azimuth_start=azimuth,
                                                    blender_coord=tag != "noblender"))
        out[key] = inp[key]
    return out


def case_clip_text(pipe, inp):
    import torch
    tok = pipe.tokenizer
    prompts = [str(p) for p in inp["prompts"]]
    processed = [_process_prompt(p) for p in prompts]

    def ids(texts):
        return tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids

    input_ids, uncond_ids = ids(processed), ids([""])
    return {"prompts": np.array(prompts), "processed_prompts": np.array(processed), "input_ids": _np(input_ids),
            "last_hidden_state": _np(pipe.text_encoder(input_ids)[0]), "uncond_input_ids": _np(uncond_ids),
            "uncond_last_hidden_state": _np(pipe.text_encoder(uncond_ids)[0]),
            "encode_prompt_prompt": inp["encode_prompt_prompt"],
            "encode_prompt_embeds": _np(pipe._encode_prompt(str(inp["encode_prompt_prompt"]), torch.device("cpu"),
                                                            True, negative_prompt=""))}


def case_clip_vision(pipe, inp):
    import torch
    out = pipe.image_encoder(torch.from_numpy(inp["pixel_values"]), output_hidden_states=True)
    transformed = [pipe.transform(image) for image in _pil(inp)]
    pixel_values = pipe.feature_extractor(transformed, return_tensors="pt").pixel_values
    pipe_out = pipe.image_encoder(pixel_values, output_hidden_states=True)
    return {"pixel_values": inp["pixel_values"], "hidden_states_m2": _np(out.hidden_states[-2]),
            "last_hidden_state": _np(out.last_hidden_state), "pooler_output": _np(out.pooler_output),
            "all_hidden_states": _np(torch.stack(out.hidden_states)), "pipe_pixel_values": _np(pixel_values),
            "pipe_hidden_states_m2": _np(pipe_out.hidden_states[-2]),
            "pipe_transformed_uint8": np.stack([np.asarray(t) for t in transformed]),
            **{k: v for k, v in inp.items() if k.startswith("ret_image_")}}


def case_resampler(pipe, inp, clip_vision):
    import torch
    return {"x": inp["x"], "tokens": _np(pipe.resampler(torch.from_numpy(inp["x"]))),
            "x_clip": clip_vision["hidden_states_m2"],
            "tokens_clip": _np(pipe.resampler(torch.from_numpy(clip_vision["hidden_states_m2"])))}


def case_unet(pipe, inp):
    import torch
    tokens = inp.get("images_tokens")
    eps = pipe.unet.forward(torch.from_numpy(inp["x"]), timesteps=torch.from_numpy(inp["timesteps"]),
                            context=torch.from_numpy(inp["context"]), camera=torch.from_numpy(inp["camera"]),
                            num_frames=int(inp["num_frames"]),
                            images_tokens=None if tokens is None else torch.from_numpy(tokens),
                            scale=float(inp["scale"]))
    return {**inp, "eps": _np(eps)}


def case_vae(pipe, inp):
    import torch
    dist = pipe.vae.encode(torch.from_numpy(inp["image"])).latent_dist
    z = torch.from_numpy(inp["z"])
    return {"image": inp["image"], "posterior_mean": _np(dist.mean), "posterior_logvar": _np(dist.logvar),
            "posterior_std": _np(dist.std), "z": inp["z"], "decoded": _np(pipe.vae.decode(z).sample),
            "pipe_decode_latents": _np(pipe.decode_latents(z)),
            "scaling_factor": np.float32(pipe.vae.config.scaling_factor)}


def case_dinov2(pipe, inp):
    import torch
    from torch.nn.functional import cosine_similarity
    from torchvision.transforms.v2.functional import to_pil_image
    sim = pipe.similarity_model
    hidden = sim.model(pixel_values=torch.from_numpy(inp["pixel_values"])).last_hidden_state
    cls = hidden[:, 0]
    gen = torch.from_numpy(inp["gen_images"])
    gen_pil = [to_pil_image(g) for g in gen]
    retrieved = _pil(inp)
    ret_emb, gen_emb = sim.get_embeddings(retrieved), sim.get_embeddings(gen)
    per_view = [cosine_similarity(gen_emb[i].unsqueeze(0), ret_emb).mean().item() for i in range(gen_emb.size(0))]
    score = sim.get_similarity_score(gen_emb, ret_emb)
    return {"pixel_values": inp["pixel_values"], "cls": _np(cls), "last_hidden_state": _np(hidden),
            "cls_normalized": _np(cls / cls.norm(dim=-1, keepdim=True)), "gen_images": inp["gen_images"],
            "gen_images_uint8": np.stack([np.asarray(p) for p in gen_pil]),
            "ret_pixel_values": _np(sim.processor(images=retrieved, return_tensors="pt").pixel_values),
            "gen_pixel_values": _np(sim.processor(images=gen_pil, return_tensors="pt").pixel_values),
            "ret_embeddings": _np(ret_emb), "gen_embeddings": _np(gen_emb),
            "per_view_mean_sim": np.array(per_view, np.float32), "similarity_score": np.float32(score),
            "alpha": np.float32(max(0, score)), **{k: v for k, v in inp.items() if k.startswith("ret_image_")}}


@contextlib.contextmanager
def _recording(obj, name: str, log: list, record):
    """Wrap obj.name so every call appends record(args, kwargs, result) to `log` (signature kept for inspect)."""
    original, had_own = getattr(obj, name), name in vars(obj)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        log.append(record(args, kwargs, result))
        return result

    setattr(obj, name, wrapper)
    try:
        yield
    finally:
        if had_own:  # a module function or an instance attribute: put it back
            setattr(obj, name, original)
        else:  # a method: drop the instance attribute that shadows it
            delattr(obj, name)


def case_ddim_sample(pipe, inp, prompt_embeds, retrieved, camera):
    import einops
    import torch
    views = int(inp["num_frames"])
    raw = pipe.encode_images(retrieved, torch.device("cpu"))  # [2k, Q, ctx]
    tokens = torch.repeat_interleave(einops.rearrange(raw, "(b n) c f -> b (n c) f", b=2), views, dim=0)
    generator = torch.Generator(device="cpu")
    extra = pipe.prepare_extra_step_kwargs(generator, float(inp["eta"]))
    out = {"prompt_embeds": prompt_embeds, "camera": camera, "initial_latents": inp["initial_latents"],
           "image_tokens": _np(tokens), "image_tokens_raw": _np(raw)}
    out.update({k: inp[k] for k in ("guidance_scale", "eta", "num_inference_steps", "scale", "num_frames")})
    out["alphas_cumprod"] = _np(pipe.scheduler.alphas_cumprod).astype(np.float32)
    for tag, image_tokens, scale in [("ip", tokens, float(inp["scale"])), ("noip", None, 1.0)]:
        eps, steps = [], []
        with _recording(pipe.unet, "forward", eps, lambda a, kw, r: _np(r)), \
             _recording(pipe.scheduler, "step", steps, lambda a, kw, r: (_np(a[0]), _np(r[0]))):
            images = pipe._sample(torch.device("cpu"), extra, float(inp["guidance_scale"]),
                                  torch.from_numpy(inp["initial_latents"]).clone(), int(inp["num_inference_steps"]),
                                  torch.from_numpy(prompt_embeds), num_frames=views,
                                  camera=torch.from_numpy(camera), image_tokens=image_tokens, scale=scale)
        out.update({f"{tag}_timesteps": _np(pipe.scheduler.timesteps).astype(np.int64),
                    f"{tag}_unet_eps": np.stack(eps), f"{tag}_noise_pred_cfg": np.stack([s[0] for s in steps]),
                    f"{tag}_latents_per_step": np.stack([s[1] for s in steps]),
                    f"{tag}_final_latents": steps[-1][1], f"{tag}_images": _np(images)})
    return out


def case_pipeline_e2e(pipe, inp):
    import pipeline_mvrag
    import torch
    args = json.loads(str(inp["args_json"]))
    call = {k: v for k, v in args.items() if k not in ("k", "device")}
    logs = {name: [] for name in ("latents", "prompt", "tokens", "camera", "decode", "emb", "score")}
    sim = pipe.similarity_model
    with _recording(pipe, "prepare_latents", logs["latents"], lambda a, kw, r: _np(r)), \
         _recording(pipe, "_encode_prompt", logs["prompt"], lambda a, kw, r: _np(r)), \
         _recording(pipe, "encode_images", logs["tokens"], lambda a, kw, r: _np(r)), \
         _recording(pipeline_mvrag, "get_camera", logs["camera"], lambda a, kw, r: _np(r)), \
         _recording(pipe, "decode_latents", logs["decode"],
                    lambda a, kw, r: (_np(a[0]), _np(r), _np(pipe.scheduler.timesteps))), \
         _recording(sim, "get_embeddings", logs["emb"], lambda a, kw, r: _np(r)), \
         _recording(sim, "get_similarity_score", logs["score"], lambda a, kw, r: r):
        images = pipe(images=_pil(inp), device=torch.device(args["device"]), **call)
    (prior_latents, prior_images, prior_t), (main_latents, _, main_t) = logs["decode"]
    score = logs["score"][0]
    return {"images": images.astype(np.float32),
            "images_uint8_round": (images * 255).round().astype(np.uint8),
            "images_uint8_mainpy": (images * 255).astype(np.uint8),
            "initial_latents": logs["latents"][0], "prompt_embeds": logs["prompt"][0],
            "image_tokens_raw": logs["tokens"][0], "camera": logs["camera"][0],
            "prior_final_latents": prior_latents, "prior_images": prior_images, "main_final_latents": main_latents,
            "prior_timesteps": prior_t.astype(np.int64), "main_timesteps": main_t.astype(np.int64),
            "ret_embeddings": logs["emb"][0], "prior_embeddings": logs["emb"][1],
            "similarity_score": np.float32(score), "fusion_scale": np.float32(max(0, score)),
            "args_json": inp["args_json"], **{k: v for k, v in inp.items() if k.startswith("ret_image_")}}


def compute_cases(pipe, cfg: dict, inputs: dict) -> dict[str, dict[str, np.ndarray]]:
    """Every case of the set, computed by the official code from `inputs`."""
    import torch
    import utils
    pipe_cfg, views = cfg["pipe"], cfg["num_frames"]
    camera = _np(utils.get_camera(views, elevation=pipe_cfg["elevation"], azimuth_start=pipe_cfg["azimuth_start"]))
    cases = {}
    with torch.no_grad():
        cases["camera"] = case_camera(pipe, inputs["camera"])
        cases["clip_text"] = case_clip_text(pipe, inputs["clip_text"])
        cases["clip_vision"] = case_clip_vision(pipe, inputs["clip_vision"])
        cases["resampler"] = case_resampler(pipe, inputs["resampler"], cases["clip_vision"])
        for name in ("unet_forward_text", "unet_forward_ip"):
            unet_inputs = dict(inputs[name])
            if unet_inputs.get("camera") is None:
                unet_inputs["camera"] = np.concatenate([camera, camera])  # [2F, 16]: two samples of F views
            cases[name] = case_unet(pipe, unet_inputs)
        cases["vae"] = case_vae(pipe, inputs["vae"])
        cases["dinov2"] = case_dinov2(pipe, inputs["dinov2"])
        cases["ddim_sample"] = case_ddim_sample(pipe, inputs["ddim_sample"],
                                                cases["clip_text"]["encode_prompt_embeds"],
                                                _pil(inputs["clip_vision"]), camera)
        cases["pipeline_e2e"] = case_pipeline_e2e(pipe, inputs["pipeline_e2e"])
    return cases
