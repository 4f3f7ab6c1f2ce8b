"""camera.npz: orbit cameras (pure numpy, no release weights involved)."""

from mvrag_jax.inputs.camera import get_camera


def check_camera(models, case):
    del models
    pairs = {}
    for key in case:
        if key.startswith("camera_"):
            tag = key[len("camera_"):]
            num_frames, elevation, azimuth_start = (int(v) for v in case[f"params_{tag}"])
            ours = get_camera(num_frames, elevation, azimuth_start, blender_coord=tag != "noblender")
            pairs[key] = (ours, case[key])
    return pairs
