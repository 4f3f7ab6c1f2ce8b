"""Dev tool (not part of the test suite): the official PyTorch UNet forward vs ours, same weights and inputs, on CPU.

    PYTHONPATH=$PWD /work/main/.venv/bin/python tools/bench_vs_torch.py                 # issue 8 figures
    PYTHONPATH=$PWD /work/main/.venv/bin/python tools/bench_vs_torch.py --repeats 9 --attention xla   # before
    PYTHONPATH=$PWD /work/main/.venv/bin/python tools/bench_vs_torch.py --profile /tmp/unet_trace   # jax trace

Config (issue 8): 8 rows (1 object x 4 views x 2 for CFG), 32x32 latents, model_channels 64, 32 channels per head,
context 256 (77 text tokens), 64 image tokens, camera 16, attention at rates 1/2/4, channel_mult (1, 2, 4, 4), fp32.

The official side runs in a torch interpreter (`--torch-python`, default /work/torchenv/bin/python) as a worker
process: it builds `MultiViewUNetModel` from the official source (`--official`, extracted from the mirror when absent)
with stand-in `xformers` (exact softmax attention) and random weights, writes weights (safetensors), inputs and its
output to a temp folder, then times one forward per "run" line on stdin. This process converts the same weights with
`convert/keys.py`, checks |ours - torch| <= 1e-4 + 1e-4 |torch|, and alternates torch / ours runs so the shared
machine's load hits both alike; it prints medians and the ratio. torch uses `--torch-threads` (default 2) intra-op
threads; XLA:CPU uses its own Eigen pool sized to the machine's cores (no knob is set here).

Whole generation (`--generation`, on by default; `--no-generation` skips it), same run, after the UNet ratio: the
OFFICIAL `MVRAGPipeline` (tools/official_cases/official_env.py stand-ins and official_cases.load_pipeline, float32,
on the bundled tiny release) generates one prompt with the same retrieved images for its main.py's 5 seeds one
after another (prior pass of `--prior-steps`, main pass of `--sample-steps`, CFG 5, fusion weight from DINOv2),
against ours (`mvrag_jax.pipeline.Pipeline` of the same release) generating the 5 objects as one batched, compiled
call (compile apart: the first call is untimed). Each side runs `--generation-repeats` times, interleaved; the
medians give the second ratio. Goals (issue 21): UNet forward >= 2x torch, whole generation >= 3x.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import types

ROWS, VIEWS, SIDE, TEXT_TOKENS, IMAGE_TOKENS = 8, 4, 32, 77, 64
UNET = {"image_size": SIDE, "in_channels": 4, "out_channels": 4, "model_channels": 64, "num_res_blocks": 2,
        "attention_resolutions": [4, 2, 1], "channel_mult": [1, 2, 4, 4], "num_head_channels": 32,
        "context_dim": 256, "camera_dim": 16, "transformer_depth": 1}
MIRROR = "/work/.mirror/yosefdayani+MV-RAG/repo"
REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_RELEASE = REPO / "tests" / "reference" / "tiny_release"
SEEDS = (0, 1, 2, 3, 4)  # the official main.py's loop: seed + i for i in range(5)
PROMPT = "a red vintage car"
RETRIEVED_SIZES = ((48, 40), (36, 52))  # two retrieved images (the tiny release's k)


# ----------------------------------------------------------------------------------------------- torch worker side
def _install_xformers_stand_in(kind: str):
    """`xformers.ops.memory_efficient_attention` as exact softmax attention on [b, l, heads, dh] (the harness patch):
    `sdpa` is torch's fused CPU kernel (flash-style, no [lq, lk] logits in memory), `math` spells it out."""
    import torch

    def memory_efficient_attention(q, k, v, attn_bias=None, op=None):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, heads, l, dh]
        if kind == "sdpa":
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            out = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v
        return out.transpose(1, 2)  # [b, lq, heads, dh]

    xformers = types.ModuleType("xformers")
    xformers.ops = types.ModuleType("xformers.ops")
    xformers.ops.memory_efficient_attention = memory_efficient_attention
    sys.modules.update({"xformers": xformers, "xformers.ops": xformers.ops})


def torch_worker(workdir: pathlib.Path, official: pathlib.Path, threads: int, seed: int, kind: str) -> None:
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    torch.set_num_threads(threads)
    import diffusers.models.modeling_utils  # noqa: F401  (before the stand-in: diffusers probes xformers' spec)
    _install_xformers_stand_in(kind)
    sys.path.insert(0, str(official))
    from modules.mv_unet import MultiViewUNetModel

    torch.manual_seed(seed)
    model = MultiViewUNetModel(**UNET).eval()
    with torch.no_grad():  # random weights everywhere (the official init zeroes output convs)
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, (p[0].numel()) ** -0.5)
            elif name.endswith("weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.1)
    save_file({k: v.contiguous().numpy() for k, v in model.state_dict().items()}, str(workdir / "unet.safetensors"))
    rng = np.random.default_rng(seed + 1)
    inputs = {"x": rng.standard_normal((ROWS, 4, SIDE, SIDE)), "timesteps": rng.integers(0, 1000, ROWS),
              "context": rng.standard_normal((ROWS, TEXT_TOKENS, UNET["context_dim"])),
              "camera": rng.standard_normal((ROWS, UNET["camera_dim"])),
              "images_tokens": rng.standard_normal((ROWS, IMAGE_TOKENS, UNET["context_dim"]))}
    inputs = {k: v.astype(np.float32) for k, v in inputs.items()}
    np.savez(workdir / "inputs.npz", **inputs)
    args = {k: torch.from_numpy(v) for k, v in inputs.items()}

    def forward():
        with torch.no_grad():
            return model(args["x"], args["timesteps"], args["context"], args["camera"], num_frames=VIEWS,
                         images_tokens=args["images_tokens"], scale=0.7)

    np.save(workdir / "torch_out.npy", forward().numpy())
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        forward()
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


def _retrieved_images(seed: int):
    import numpy as np
    rng = np.random.default_rng(seed + 7)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in RETRIEVED_SIZES]


def torch_generation_worker(workdir: pathlib.Path, threads: int, seed: int, sample_steps: int,
                            prior_steps: int) -> None:
    """The official pipeline on the tiny release: one 'run' line on stdin = the 5 seeds one after another."""
    sys.path.insert(0, str(REPO / "tools" / "official_cases"))
    import official_env  # noqa: PLC0415  (stand-ins and patches before any official import)
    official_env.prepare(workdir, extra_site=pathlib.Path("~/.cache/mvrag_official_site").expanduser())
    import official_cases
    import torch
    from PIL import Image
    torch.set_num_threads(threads)  # prepare() fixes one thread for parity; timings use --torch-threads
    pipe = official_cases.load_pipeline(TINY_RELEASE)
    images = [Image.fromarray(a) for a in _retrieved_images(seed)]
    side = json.loads((TINY_RELEASE / "unet" / "config.json").read_text()).get("image_size", 32) * 8

    def generate_all():
        with torch.no_grad():
            return [pipe(prompt=PROMPT, images=images, height=side, width=side, elevation=15, azimuth_start=0,
                         num_inference_steps=sample_steps, num_initial_steps=prior_steps, guidance_scale=5.0,
                         device=torch.device("cpu"), seed=s) for s in SEEDS]

    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "side": side}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        generate_all()
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


def jax_generation(seed: int, sample_steps: int, prior_steps: int):
    """(call, compile-inclusive first call seconds): our pipeline on the same release generating the 5 seeds as
    one batched call (every object in one compiled program)."""
    from mvrag_jax.pipeline import ObjectRequest, Pipeline, SamplingOptions
    pipeline = Pipeline.load(release=TINY_RELEASE)
    retrieved = tuple(_retrieved_images(seed))
    requests = [ObjectRequest(prompt=PROMPT, retrieved=retrieved, seed=s) for s in SEEDS]
    options = SamplingOptions(num_inference_steps=sample_steps, prior_steps=prior_steps, guidance_scale=5.0,
                              elevation=15.0, azimuth_start=0.0)

    def call() -> float:
        start = time.perf_counter()
        pipeline.generate(requests, options)  # host arrays back: the call has finished
        return time.perf_counter() - start

    return call, call()


def compare_generation(flags, workdir: str) -> tuple[float, float]:
    """Median seconds (torch, ours) of the whole 5-seed generation, interleaved runs."""
    worker = subprocess.Popen(
        [flags.torch_python, __file__, "--generation-worker", "--workdir", workdir, "--torch-threads",
         str(flags.torch_threads), "--seed", str(flags.seed), "--sample-steps", str(flags.sample_steps),
         "--prior-steps", str(flags.prior_steps)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = worker.stdout.readline()
    if not line:
        raise SystemExit("bench_vs_torch: the official generation worker exited before it was ready (see its "
                         "stderr above); it needs the torch venv of tools/official_cases/make_cases.py")
    ready = json.loads(line)
    call, first_s = jax_generation(flags.seed, flags.sample_steps, flags.prior_steps)
    torch_s, ours_s = [], []
    for _ in range(flags.generation_repeats):
        worker.stdin.write("run\n")
        worker.stdin.flush()
        torch_s.append(json.loads(worker.stdout.readline())["seconds"])
        ours_s.append(call())
    worker.stdin.close()
    worker.wait()
    t, o = statistics.median(torch_s), statistics.median(ours_s)
    print(f"generation: {len(SEEDS)} objects ({ready['side']} px, 4 views), prior {flags.prior_steps} + main "
          f"{flags.sample_steps} DDIM steps, CFG 5; official loop of seeds (torch {ready['threads']} threads) vs "
          f"ours batched (first call with compile {first_s:.1f} s, untimed)")
    print("generation torch s: " + " ".join(f"{s:.2f}" for s in torch_s))
    print("generation ours  s: " + " ".join(f"{s:.2f}" for s in ours_s))
    print(f"generation median torch {t:.2f} s, ours {o:.2f} s: ours runs at {t / o:.2f}x torch's speed")
    return t, o


# ------------------------------------------------------------------------------------------------- our side
def jax_forward(workdir: pathlib.Path, attention: str, precision: str):
    """(jitted forward, args, torch output NHWC, compile seconds) for our UNet on the worker's weights and inputs."""
    import flax.linen as nn
    import jax
    import numpy as np
    from safetensors.numpy import load_file

    from mvrag_jax.convert.keys import state_dict_to_params
    from mvrag_jax.models.unet import MultiViewUNet, UNetConfig, init_params

    config = UNetConfig(**UNET, num_frames=VIEWS, attention=attention)
    shapes = nn.unbox(jax.eval_shape(init_params, config, jax.random.key(0)))
    params = state_dict_to_params(load_file(str(workdir / "unet.safetensors")), shapes, component="unet")
    raw = np.load(workdir / "inputs.npz")
    args = (jax.device_put(params), raw["x"].transpose(0, 2, 3, 1), raw["timesteps"].astype(np.float32),
            raw["context"], raw["camera"], raw["images_tokens"])
    model = MultiViewUNet(config)

    @jax.jit
    def forward(params, x, timesteps, context, camera, image_tokens):
        with jax.default_matmul_precision(precision):
            return model.apply({"params": params}, x, timesteps, context, camera, image_tokens, 0.7)

    start = time.perf_counter()
    compiled = forward.lower(*args).compile()
    compile_s = time.perf_counter() - start
    expected = np.load(workdir / "torch_out.npy").transpose(0, 2, 3, 1)
    return compiled, args, expected, compile_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--official", default="/tmp/official", help="official MV-RAG source tree (extracted if absent)")
    parser.add_argument("--torch-python", default="/work/torchenv/bin/python")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--torch-attention", choices=("sdpa", "math"), default="sdpa",
                        help="stand-in for xformers: torch's fused SDPA kernel or explicit softmax(q k^T) v")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per side, interleaved")
    parser.add_argument("--attention", default="auto", help="our runtime.attention kernel (xla: the pre-issue path)")
    parser.add_argument("--precision", default="highest", help="jax.default_matmul_precision of our forward")
    parser.add_argument("--profile", help="also write a jax.profiler trace of 3 of our forwards here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generation", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the whole generation (official 5-seed loop vs ours batched)")
    parser.add_argument("--sample-steps", type=int, default=50, help="generation: main-pass DDIM steps (both sides)")
    parser.add_argument("--prior-steps", type=int, default=10, help="generation: prior-pass DDIM steps (both sides)")
    parser.add_argument("--generation-repeats", type=int, default=3, help="generation: timed runs per side")
    parser.add_argument("--generation-worker", action="store_true", help=argparse.SUPPRESS)
    flags = parser.parse_args()
    official = pathlib.Path(flags.official)
    if flags.worker:
        return torch_worker(pathlib.Path(flags.workdir), official, flags.torch_threads, flags.seed, flags.torch_attention)
    if flags.generation_worker:
        return torch_generation_worker(pathlib.Path(flags.workdir), flags.torch_threads, flags.seed,
                                       flags.sample_steps, flags.prior_steps)

    import jax
    import numpy as np

    if not (official / "modules" / "mv_unet.py").exists():
        official.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", MIRROR, "archive", "HEAD"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(official)], input=archive, check=True)
    with tempfile.TemporaryDirectory(prefix="bench_vs_torch_") as workdir:
        worker = subprocess.Popen(
            [flags.torch_python, __file__, "--worker", "--workdir", workdir, "--official", str(official),
             "--torch-threads", str(flags.torch_threads), "--seed", str(flags.seed),
             "--torch-attention", flags.torch_attention],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(worker.stdout.readline())
        forward, args, expected, compile_s = jax_forward(pathlib.Path(workdir), flags.attention, flags.precision)
        ours = np.asarray(forward(*args))
        error = np.abs(ours - expected)
        bound = 1e-4 + 1e-4 * np.abs(expected)
        print(f"torch {ready['torch']} ({ready['threads']} threads, {flags.torch_attention} attention) vs jax {jax.__version__} "
              f"({jax.default_backend()}, {os.cpu_count()} cores), attention={flags.attention}, "
              f"precision={flags.precision}; our compile {compile_s:.1f} s")
        print(f"parity: max |ours - torch| = {error.max():.2e}, worst error/bound = {(error / bound).max():.3f} "
              f"({'OK' if (error <= bound).all() else 'FAIL'})")

        def time_ours() -> float:
            start = time.perf_counter()
            jax.block_until_ready(forward(*args))
            return time.perf_counter() - start

        time_ours()  # warm (first dispatch allocates)
        torch_s, ours_s = [], []
        for _ in range(flags.repeats):
            worker.stdin.write("run\n")
            worker.stdin.flush()
            torch_s.append(json.loads(worker.stdout.readline())["seconds"])
            ours_s.append(time_ours())
        worker.stdin.close()
        worker.wait()
        if flags.profile:
            with jax.profiler.trace(flags.profile):
                for _ in range(3):
                    time_ours()
        t, o = statistics.median(torch_s), statistics.median(ours_s)
        print("torch s: " + " ".join(f"{s:.2f}" for s in torch_s))
        print("ours  s: " + " ".join(f"{s:.2f}" for s in ours_s))
        print(f"median torch {t:.2f} s, ours {o:.2f} s: ours runs at {t / o:.2f}x torch's speed")
    if flags.generation:
        with tempfile.TemporaryDirectory(prefix="bench_vs_torch_generation_") as workdir:
            gt, go = compare_generation(flags, workdir)
        print(f"ratios (one run): UNet forward {t / o:.2f}x (goal >= 2x), whole generation {gt / go:.2f}x "
              "(goal >= 3x)")


if __name__ == "__main__":
    main()
