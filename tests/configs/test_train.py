"""configs/train.py presets: size=paper is appendix C.2's run, field by field."""

import jax
import pytest

from configs import train as train_config
from mvrag_jax.train.state import InitError
from mvrag_jax.train.trainable import trainable_paths
from mvrag_jax.train.trainer import make_mesh, make_trainer


def test_paper_preset_is_appendix_c2():
    cfg = train_config.get_config("size=paper")
    # AdamW 5e-6, batch 24, about 11,000 steps
    assert (cfg.train.optimizer.learning_rate, cfg.train.batch_size, cfg.train.steps) == (5e-6, 24, 11_000)
    assert cfg.data.batch_size == 24 and cfg.train.optimizer.schedule == "constant"
    # 2D and 3D modes alternate with equal steps; ", 3d asset" on 3D prompts only
    assert dict(cfg.data.mix) == {"weight_3d": 1.0, "weight_2d": 1.0, "per": "batch"}
    assert cfg.data.mode_3d.caption_suffix == ", 3d asset" and "3d asset" not in cfg.data.mode_2d.caption_template
    # real data: Objaverse-style renders and ImageNet-21k class folders, 256 px, 4 views, k=4 at CLIP's 224
    assert (cfg.data.mode_3d.dataset, cfg.data.mode_2d.dataset) == ("mv_renders", "class_images")
    assert (cfg.data.image_size, cfg.data.num_views, cfg.data.num_retrieved, cfg.data.retrieved_size) == (256, 4, 4, 224)
    # frozen OpenCLIP ViT-H/14 image encoder, 16 resampler tokens per image, only the image branch trains
    vision = cfg.model.clip_vision
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size) == (1280, 32, 14)
    assert cfg.model.resampler.num_queries == 16 and cfg.train.trainable == "ip"
    # the init is the converted MVDream + ImageDream checkpoint, which the user must name
    assert cfg.train.init == ""


def test_paper_preset_trains_only_the_resampler_and_ip_projections():
    cfg = train_config.get_config("size=paper")
    cfg.train.init = "random"
    trainer = make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
    paths = trainable_paths(trainer.abstract_state.trainable)
    assert paths, "nothing trains"
    outside = [p for p in paths if not (p.startswith("resampler/") or p.split("/")[-2] in ("to_k_ip", "to_v_ip"))]
    assert not outside, outside[:5]
    assert any(p.startswith("resampler/") for p in paths) and any("/to_k_ip/" in p for p in paths)


def test_paper_preset_without_an_init_names_the_fix():
    cfg = train_config.get_config("size=paper")
    with pytest.raises(InitError, match="--config.train.init"):
        make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
