"""Bad files an operator feeds in: NaN/Inf weights (refused at load, tensor named: convert, generate, export) and
corrupt PNGs in `mvrag eval --images` (skipped, counted)."""

import json
import shutil

import numpy as np
import pytest

from mvrag_jax.cli import main
from mvrag_jax.convert import convert_release, load_model_checkpoint
from mvrag_jax.convert.checkpoint import save_checkpoint
from mvrag_jax.inputs.release import NonFiniteWeightsError, read_safetensors, write_safetensors
from tests.conftest import TINY_RELEASE
from tests.eval.conftest import eval_inputs  # noqa: F401 (a fixture)
from tests.reliability.conftest import last_line

NO_CACHE = ["--compile_cache_dir", "none"]
UNET_FILE = "unet/diffusion_pytorch_model.safetensors"


def _poisoned_release(tmp_path, value=np.nan):
    release = tmp_path / "release"
    shutil.copytree(TINY_RELEASE, release)
    tensors = read_safetensors(release / UNET_FILE)
    name = sorted(k for k in tensors if k.endswith("to_k_ip.weight"))[0]
    poisoned = tensors[name].copy()
    poisoned.flat[3] = value
    write_safetensors(release / UNET_FILE, {**tensors, name: poisoned})
    return release, name


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_convert_refuses_non_finite_release_weights_naming_the_tensor(tmp_path, capsys, value):
    release, name = _poisoned_release(tmp_path, value)
    with pytest.raises(NonFiniteWeightsError, match=rf"tensor {name} in .*{UNET_FILE} holds 1 NaN/Inf value"):
        convert_release(release, tmp_path / "ckpt", show_progress=False)
    assert main(["mvrag", "convert", "--release", str(release), "--out", str(tmp_path / "ckpt")] + NO_CACHE) == 2
    assert f"tensor {name}" in last_line(capsys.readouterr().err) and not (tmp_path / "ckpt").exists()


def test_generate_refuses_a_checkpoint_with_nan_weights(tmp_path, tiny_ckpt, capsys):
    configs, params = load_model_checkpoint(tiny_ckpt)
    params["resampler"]["proj_in"]["kernel"] = np.full_like(params["resampler"]["proj_in"]["kernel"], np.nan)
    release_files = {str(p.relative_to(tiny_ckpt / "release_files")): p
                     for p in (tiny_ckpt / "release_files").rglob("*") if p.is_file()}
    bad = save_checkpoint(tmp_path / "bad_ckpt", configs, params, release_files)
    with pytest.raises(NonFiniteWeightsError, match=r"tensor resampler/proj_in/kernel in .*bad_ckpt holds \d+"):
        load_model_checkpoint(bad)
    out = tmp_path / "out"
    assert main(["mvrag", "generate", "--ckpt", str(bad), "--prompt", "a cube", "--out", str(out),
                 "--steps", "2"] + NO_CACHE) == 2
    line = last_line(capsys.readouterr().err)
    assert line.startswith("mvrag generate: error: tensor resampler/proj_in/kernel") and "re-download" in line
    assert not any(out.rglob("*.png"))  # refused at load: no black views
    assert main(["mvrag", "export", "--ckpt", str(bad), "--out", str(tmp_path / "rel")] + NO_CACHE) == 2
    assert not (tmp_path / "rel").exists()


def test_corrupt_pngs_in_eval_images_are_skipped_and_counted(eval_inputs, tmp_path, capsys):  # noqa: F811
    views = tmp_path / "views"
    shutil.copytree(eval_inputs["views"], views)
    folders = sorted(p for p in views.iterdir() if p.is_dir())
    view = sorted(folders[0].glob("view_*.png"))[1]
    view.write_bytes(view.read_bytes()[:40])  # truncated mid-header
    (sorted(folders[2].glob("view_*.png"))[0]).write_bytes(b"not a png at all")
    out = tmp_path / "out"
    assert main(["mvrag", "eval", "--images", str(views), "--dataset", str(eval_inputs["dataset"]), "--out", str(out),
                 "--dinov2", str(eval_inputs["dinov2"])] + NO_CACHE) == 0
    err = capsys.readouterr().err
    assert "mvrag eval: clip not computed:" in err and "--clip_model" in err  # no weights passed: said, not silent
    assert "mvrag eval: fid not computed:" in err and "--inception" in err
    result = json.loads((out / "metrics.json").read_text())
    assert result["samples"] == 1 and result["metrics"]["dinov2"]["n"] == 1
    skipped = {s["item"]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == {folders[0].name, folders[2].name}
    assert all(r.startswith("unreadable view in") for r in skipped.values())
