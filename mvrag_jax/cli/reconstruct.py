"""`mvrag reconstruct`: 4 generated views per object -> LGM 3D Gaussians (.ply), 18 renders and a turntable GIF."""

import json

from absl import flags

from mvrag_jax.errors import UsageError
from mvrag_jax.cli.flags import Command


def define_lgm(fv):
    """--lgm and --lgm-input-size, shared by reconstruct, eval --rerender and generate --reconstruct."""
    flags.DEFINE_string("lgm", None, "LGM weights: the released model_fp16_fixrot.safetensors (github 3DTopia/LGM, "
                        "'big' config); sizes are read from its tensors.", flag_values=fv)
    flags.DEFINE_integer("lgm_input_size", 256, "LGM input resolution (not stored in the weights; 256 for every "
                         "released LGM).", flag_values=fv)


def define_reconstruct(fv):
    flags.DEFINE_string("views", None, "An object folder (view_0.png..view_3.png, MVDream order, as `mvrag "
                        "generate` writes) or a folder of them (generate's --out).", flag_values=fv)
    define_lgm(fv)
    flags.DEFINE_string("out", None, "Output folder: <object>/gaussians.ply, render_00..17.png, turntable.gif, "
                        "recon.json; a rerun skips finished objects.", flag_values=fv)
    flags.DEFINE_float("elevation", 15.0, "Generation elevation (degrees, > 0 = camera above) for objects without a "
                       "record.json; with one, its settings.elevation is used.", flag_values=fv)
    flags.DEFINE_float("render_elevation", None, "Elevation of the render circle (default: the generation "
                       "elevation).", flag_values=fv)
    flags.DEFINE_integer("renders", 18, "Views rendered on the circle (the paper's 18, every 20 degrees).",
                         flag_values=fv)
    flags.DEFINE_integer("render_size", 256, "Render resolution (pixels per side).", flag_values=fv)
    flags.DEFINE_integer("batch", 1, "Objects per device call (padded to a multiple of the local devices).",
                         flag_values=fv)
    flags.DEFINE_string("dtype", "fp32", "LGM compute dtype: fp32 or bf16 (params stay fp32).", flag_values=fv)
    flags.mark_flags_as_required(["views", "lgm", "out"], flag_values=fv)


DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def run_reconstruct(fv, argv):
    from mvrag_jax.recon import reconstruct
    if fv.dtype not in DTYPES:
        raise UsageError(f"--dtype {fv.dtype!r}: choose one of {', '.join(DTYPES)}")
    settings = reconstruct.ReconstructSettings(num_renders=fv.renders, render_size=fv.render_size,
                                               render_elevation=fv.render_elevation, batch=fv.batch)
    summary = reconstruct.run(views=fv.views, lgm_path=fv.lgm, out=fv.out, elevation=fv.elevation,
                              input_size=fv.lgm_input_size, dtype=DTYPES[fv.dtype], settings=settings)
    print(json.dumps(summary))
    return 0


COMMANDS = (
    Command("reconstruct", "3D Gaussians from generated views with LGM: gaussians.ply, 18 renders, turntable GIF.",
            define_reconstruct, run_reconstruct),
)
