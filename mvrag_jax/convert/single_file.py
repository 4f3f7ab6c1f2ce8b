"""One-file checkpoints as a flat {key: numpy array}: `.safetensors` (read without torch) or pickled PyTorch files
(`.pt`, `.ckpt`, `.pth`, `.bin`: `torch.load(weights_only=True)`, only when the optional torch extra is installed).

    state_dict = read_state_dict("sd-v2.1-base-4view.pt")   # {"model.diffusion_model.time_embed.0.weight": ...}
"""

import pathlib

import numpy as np

from mvrag_jax.inputs.release import read_safetensors
from mvrag_jax.errors import MvragError

PICKLE_SUFFIXES = (".pt", ".ckpt", ".pth", ".bin")


class SingleFileError(MvragError, ValueError):
    """A one-file checkpoint cannot be read (missing, unknown format, torch absent for a pickle, no tensors)."""


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint at `path`, as stored (fp16/bf16 kept; conversion casts). A Lightning/sgm file
    whose tensors sit under "state_dict" yields that dict."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise SingleFileError(f"checkpoint file {path} does not exist; pass the downloaded .pt/.ckpt or .safetensors")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise SingleFileError(f"{path}: unknown checkpoint format {path.suffix!r}; pass a .safetensors file or a "
                          f"pickled PyTorch file ({', '.join(PICKLE_SUFFIXES)})")


def _read_pickle(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise SingleFileError(
            f"{path} is a pickled PyTorch checkpoint and reading it needs torch, which is not installed; install the "
            "optional extra (`pip install -e '.[torch]'`), or convert the file once to .safetensors where torch is "
            "installed: python -c \"import sys, torch, safetensors.torch as s; s.save_file({k: v.contiguous() for k, "
            "v in torch.load(sys.argv[1], map_location='cpu', weights_only=True).items()}, sys.argv[2])\" IN.pt "
            "OUT.safetensors") from e
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt or non-weight pickles
        raise SingleFileError(f"cannot load {path} with torch.load(weights_only=True): {e}; re-download the file "
                              "(a pickle that needs code to unpickle is refused on purpose)") from e
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise SingleFileError(f"{path} holds a {type(loaded).__name__}, not a state dict of tensors")
    others = sorted(k for k, v in loaded.items() if not isinstance(v, torch.Tensor))
    if others:
        raise SingleFileError(f"{path} has entries that are not tensors: {others[:10]}; pass the model's state dict")
    return {key: _to_numpy(value) for key, value in loaded.items()}


def _to_numpy(tensor) -> np.ndarray:
    import ml_dtypes
    import torch
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:  # numpy has no bf16: reinterpret the bits
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()
