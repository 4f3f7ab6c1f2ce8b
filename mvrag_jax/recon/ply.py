"""3D Gaussians as the standard 3DGS .ply (binary little-endian float32 vertices: x, y, z, f_dc_0..2, opacity,
scale_0..2, rot_0..3), which 3DGS viewers and the official LGM `GaussianRenderer.load_ply` read.

As LGM's `save_ply(compatible=True)`: Gaussians with opacity < 0.005 are pruned, and the activations are inverted
the way 3DGS stores its parameters: opacity -> logit (inverse sigmoid, clamped to [1e-6, 1 - 1e-6] like kiui),
scale -> log(scale + 1e-8), rgb -> SH degree-0 coefficient (rgb - 0.5) / C0; positions and (unit, w-first)
quaternions are stored as they are.
"""

import os
import pathlib

import numpy as np
from mvrag_jax.errors import MvragError

SH_C0 = 0.28209479177387814
MIN_OPACITY = 0.005
PROPERTIES = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
              "rot_0", "rot_1", "rot_2", "rot_3")


class PlyError(MvragError, ValueError):
    """A .ply file is not a 3DGS Gaussian file this module reads."""


def to_3dgs(gaussians: np.ndarray, min_opacity: float = MIN_OPACITY) -> np.ndarray:
    """LGM's activated Gaussians [N, 14] -> 3DGS-stored rows [M, 14] in PROPERTIES order (pruned by opacity)."""
    g = np.asarray(gaussians, np.float32)
    g = g[g[:, 3] >= min_opacity]
    opacity = np.clip(g[:, 3:4], 1e-6, 1 - 1e-6)
    return np.concatenate([g[:, 0:3], (g[:, 11:14] - 0.5) / SH_C0, np.log(opacity / (1 - opacity)),
                           np.log(g[:, 4:7] + 1e-8), g[:, 7:11]], axis=1).astype(np.float32)


def from_3dgs(rows: np.ndarray) -> np.ndarray:
    """3DGS-stored rows [M, 14] -> LGM's activated layout [M, 14] (pos, opacity, scale, rotation, rgb)."""
    r = np.asarray(rows, np.float32)
    return np.concatenate([r[:, 0:3], 1 / (1 + np.exp(-r[:, 6:7])), np.exp(r[:, 7:10]), r[:, 10:14],
                           SH_C0 * r[:, 3:6] + 0.5], axis=1).astype(np.float32)


def write_ply(path: str | os.PathLike, gaussians: np.ndarray, min_opacity: float = MIN_OPACITY) -> int:
    """Write one object's Gaussians [N, 14] (LGM layout) atomically; returns how many were kept."""
    rows = to_3dgs(gaussians, min_opacity)
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {len(rows)}\n" + \
        "".join(f"property float {name}\n" for name in PROPERTIES) + "end_header\n"
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(header.encode("ascii"))
            f.write(rows.astype("<f4").tobytes())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(rows)


def read_ply(path: str | os.PathLike) -> np.ndarray:
    """A 3DGS .ply (binary little-endian float vertices, any property order, extra properties ignored) -> LGM-layout
    Gaussians [M, 14]; higher SH bands (f_rest_*) are dropped: LGM renders degree 0."""
    data = pathlib.Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise PlyError(f"{path} is not a .ply file (no 'ply' magic / end_header)")
    lines = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise PlyError(f"{path}: only binary_little_endian .ply files are read; re-save it in that format")
    count = next((int(l.split()[2]) for l in lines if l.startswith("element vertex")), None)
    names = [l.split()[2] for l in lines if l.startswith("property")]
    if count is None or any(not l.startswith("property float ") for l in lines if l.startswith("property")):
        raise PlyError(f"{path}: expected one 'element vertex' of float properties (a 3DGS Gaussian file)")
    missing = [p for p in PROPERTIES if p not in names]
    if missing:
        raise PlyError(f"{path} lacks the 3DGS properties {missing}; it is not a Gaussian-splatting file")
    table = np.frombuffer(data[end + len(b"end_header\n"):], "<f4", count * len(names)).reshape(count, len(names))
    return from_3dgs(table[:, [names.index(p) for p in PROPERTIES]])
