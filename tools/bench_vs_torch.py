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
    flags = parser.parse_args()
    official = pathlib.Path(flags.official)
    if flags.worker:
        return torch_worker(pathlib.Path(flags.workdir), official, flags.torch_threads, flags.seed, flags.torch_attention)

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


if __name__ == "__main__":
    main()
