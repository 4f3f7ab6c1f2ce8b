"""The released LGM weights (`model_fp16_fixrot.safetensors`, a plain `LGM.state_dict()`) <-> our Flax params.

The file carries no config: sizes are read from the tensor shapes (`LGMConfig.from_shapes`), except `input_size`,
which weights cannot tell (256 for every released LGM). Keys map through the shared rename table (convert/keys.py):
`unet.down_blocks.0.nets.0.conv1.weight` -> `unet/down_blocks_0/nets_0/conv1/kernel` (OIHW -> HWIO).
"""

import pathlib
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from mvrag_jax.convert.keys import params_to_state_dict, state_dict_to_params
from mvrag_jax.inputs.release import ReleaseError, read_safetensors, read_safetensors_shapes, write_safetensors
from mvrag_jax.models import lgm
from mvrag_jax.errors import MvragError

_HINT = ("an LGM checkpoint holds unet.* and conv.* (core/models.py LGM.state_dict()); if sizes differ, the file is "
         "not the network its shapes describe (a truncated or edited file?)")
# Training-only modules that older checkpoints may still carry (LGM.state_dict() drops them; load_state_dict is strict=False).
_IGNORED_PREFIXES = ("lpips_loss.",)


class LGMCheckpointError(MvragError, ValueError):
    """An LGM checkpoint file is missing or unreadable."""


def _check_file(path: pathlib.Path) -> None:
    if not path.is_file():
        raise LGMCheckpointError(f"LGM checkpoint {path} does not exist; pass the released model_fp16_fixrot.safetensors "
                                 "(github 3DTopia/LGM, 'big' config) with --lgm")
    if path.suffix != ".safetensors":
        raise LGMCheckpointError(f"LGM checkpoint {path} is not a .safetensors file; pass model_fp16_fixrot.safetensors "
                                 "(a .ckpt/.pt: save its state dict with safetensors.torch.save_file first)")


def read_config(path: str | pathlib.Path, input_size: int = 256, dtype: str = "float32") -> lgm.LGMConfig:
    """The network sizes of an LGM checkpoint, from its header alone."""
    path = pathlib.Path(path)
    _check_file(path)
    try:
        shapes = read_safetensors_shapes(path)
    except ReleaseError as e:
        raise LGMCheckpointError(str(e)) from e
    return lgm.LGMConfig.from_shapes(shapes, input_size=input_size, dtype=dtype)


def abstract_params(config: lgm.LGMConfig) -> Any:
    return nn.unbox(jax.eval_shape(lgm.init_params, config, jax.random.key(0)))


def state_dict_to_lgm_params(state_dict: dict[str, np.ndarray], config: lgm.LGMConfig) -> dict:
    """Official LGM state dict -> float32 Flax params; mismatches raise convert.CheckpointKeyError."""
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_IGNORED_PREFIXES)}
    return state_dict_to_params(state_dict, abstract_params(config), component="lgm", hint=_HINT)


def load_lgm(path: str | pathlib.Path, input_size: int = 256, dtype: str = "float32") -> tuple[lgm.LGMConfig, dict]:
    """(config, float32 numpy params) of a released LGM .safetensors file."""
    path = pathlib.Path(path)
    config = read_config(path, input_size, dtype)
    try:
        state_dict = read_safetensors(path)
    except ReleaseError as e:
        raise LGMCheckpointError(str(e)) from e
    return config, state_dict_to_lgm_params(state_dict, config)


def export_lgm(params: Any, path: str | pathlib.Path, dtype: str = "fp16") -> pathlib.Path:
    """Params -> an official-layout .safetensors (`LGM.load_state_dict` loads it); fp16 like the release or fp32."""
    cast = {"fp16": np.float16, "fp32": np.float32}[dtype]
    state = {k: np.asarray(v, cast) for k, v in params_to_state_dict(params).items()}
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write_safetensors(tmp, state)
    tmp.replace(path)  # atomic: a half-written checkpoint is never visible under its name
    return path
