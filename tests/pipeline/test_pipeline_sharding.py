"""Pipeline.load(mesh=...) on 8 fake CPU devices: objects data-parallel over (data, fsdp), params replicated, the
same images as one device. Fake devices must exist before jax initialises, so the run is a subprocess."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).parents[2]

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    from mvrag_jax import sharding
    from mvrag_jax.pipeline import ObjectRequest, Pipeline, SamplingOptions

    ckpt = sys.argv[1]
    rng = np.random.default_rng(0)
    requests = [ObjectRequest(f"object {i}", tuple(rng.integers(0, 256, (24 + 4 * i, 30, 3), dtype=np.uint8)
                                                   for _ in range(2)), seed=i) for i in range(8)]
    options = SamplingOptions(num_inference_steps=1, prior_steps=1)
    mesh = sharding.make_mesh(data=2, fsdp=4)
    with jax.default_matmul_precision("highest"):
        sharded_pipe = Pipeline.load(ckpt=ckpt, mesh=mesh)
        sharded, _ = sharded_pipe.generate(requests, options)
        single, _ = Pipeline.load(ckpt=ckpt).generate(requests, options)
        odd, _ = sharded_pipe.generate(requests[:3], options)  # padded to the 8-wide object axis
    latents = sharded_pipe._initial_latents(requests)
    print(json.dumps({
        "devices": len(jax.devices()),
        "latents_shards": len({s.device for s in latents.addressable_shards}),
        "latents_shard_rows": latents.addressable_shards[0].data.shape[0],
        "max_abs_diff": max(float(np.abs(a.images_float - b.images_float).max()) for a, b in zip(sharded, single)),
        "weight_diff": max(abs(a.fusion_weight - b.fusion_weight) for a, b in zip(sharded, single)),
        "odd_max_abs_diff": max(float(np.abs(a.images_float - b.images_float).max()) for a, b in zip(odd, single)),
        "odd_count": len(odd),
    }), flush=True)
""")


@pytest.mark.slow  # compiles every stage twice at 8 objects (sharded and single-device) in a subprocess
def test_objects_split_over_the_mesh_match_one_device(tiny_ckpt):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_ckpt)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert run["devices"] == 8
    assert run["latents_shards"] == 8 and run["latents_shard_rows"] == 1  # one object per device
    assert run["max_abs_diff"] < 1e-4 and run["weight_diff"] < 1e-5
    assert run["odd_count"] == 3 and run["odd_max_abs_diff"] < 1e-4
