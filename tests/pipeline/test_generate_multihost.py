"""`mvrag generate` as a 2-process job on 127.0.0.1 (CPU, gloo): each process takes its own objects and both write
into one shared output folder, as every host of a TPU slice does."""

import json
import subprocess
import sys

from PIL import Image

from tests.conftest import TINY_RELEASE, free_port
from tests.train.conftest import subprocess_env

PROMPTS = ("a red car", "a blue boat", "a green lamp")


def test_two_processes_split_the_objects_and_share_the_output(tmp_path):
    images = tmp_path / "retrieved"
    images.mkdir()
    Image.new("RGB", (40, 30), "red").save(images / "a.png")
    Image.new("RGB", (28, 44), "blue").save(images / "b.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out, address = tmp_path / "out", f"127.0.0.1:{free_port()}"
    argv = lambda i: [sys.executable, "-m", "mvrag_jax", "generate", "--release", str(TINY_RELEASE), "--prompts",
                      str(prompts), "--retrieved", str(images), "--k", "2", "--steps", "1", "--prior-steps", "1",
                      "--out", str(out), "--compile-cache-dir", "none", "--coordinator", address,
                      "--num-processes", "2", "--process-id", str(i), "--init-timeout", "600"]
    procs = [subprocess.Popen(argv(i), env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-3000:]
    summaries = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert [(s["process"], s["processes"], s["generated"]) for s in summaries] == [(0, 2, 2), (1, 2, 1)]
    records = sorted(out.glob("*/record.json"))
    assert [json.loads(r.read_text())["prompt"] for r in records] == list(PROMPTS)  # objects 0, 1, 2: none twice
