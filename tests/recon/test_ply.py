"""mvrag_jax/recon/ply.py: the 3DGS .ply layout, LGM's inverse activations and pruning, and the round trip."""

import numpy as np
import pytest

from mvrag_jax.recon import ply
from tests.recon.test_render import random_scene


def test_header_properties_and_inverse_activations(tmp_path):
    g = random_scene(5, seed=0)
    g[0, 3] = 0.001  # pruned: LGM's save_ply keeps opacity >= 0.005
    kept = ply.write_ply(tmp_path / "g.ply", g)
    assert kept == 4
    data = (tmp_path / "g.ply").read_bytes()
    header, body = data.split(b"end_header\n")
    assert header.decode().splitlines()[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 4"]
    assert [l.split()[2] for l in header.decode().splitlines() if l.startswith("property")] == list(ply.PROPERTIES)
    rows = np.frombuffer(body, "<f4").reshape(4, 14)
    src = g[1:]
    np.testing.assert_allclose(rows[:, 0:3], src[:, 0:3])
    np.testing.assert_allclose(rows[:, 3:6], (src[:, 11:14] - 0.5) / 0.28209479177387814, rtol=1e-6)
    np.testing.assert_allclose(rows[:, 6], np.log(src[:, 3] / (1 - src[:, 3])), rtol=1e-5)
    np.testing.assert_allclose(rows[:, 7:10], np.log(src[:, 4:7] + 1e-8), rtol=1e-6)
    np.testing.assert_allclose(rows[:, 10:14], src[:, 7:11])


def test_round_trip_and_foreign_property_order(tmp_path):
    g = random_scene(6, seed=1)
    ply.write_ply(tmp_path / "g.ply", g)
    np.testing.assert_allclose(ply.read_ply(tmp_path / "g.ply"), g, rtol=1e-5, atol=1e-6)
    # A 3DGS training output: normals and f_rest first, other order; read by name.
    rows = ply.to_3dgs(g)
    names = ["nx", "ny", "nz", "f_rest_0"] + list(reversed(ply.PROPERTIES))
    table = np.concatenate([np.zeros((6, 4), np.float32), rows[:, ::-1]], 1)
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 6\n" + \
        "".join(f"property float {n}\n" for n in names) + "end_header\n"
    (tmp_path / "other.ply").write_bytes(header.encode() + table.astype("<f4").tobytes())
    np.testing.assert_allclose(ply.read_ply(tmp_path / "other.ply"), g, rtol=1e-5, atol=1e-6)


def test_bad_files_say_why(tmp_path):
    (tmp_path / "a.ply").write_bytes(b"not a ply")
    with pytest.raises(ply.PlyError, match="not a .ply"):
        ply.read_ply(tmp_path / "a.ply")
    (tmp_path / "b.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(ply.PlyError, match="binary_little_endian"):
        ply.read_ply(tmp_path / "b.ply")
    (tmp_path / "c.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 0\n"
                                     b"property float x\nend_header\n")
    with pytest.raises(ply.PlyError, match="lacks the 3DGS properties"):
        ply.read_ply(tmp_path / "c.ply")
