"""One MV-RAG training step: a pure function of (state, batch, rng), jitted once by train/trainer.py.

    step = functools.partial(train_step, models=models, tx=tx, schedule=schedule, options=options)
    state, metrics = jax.jit(step, donate_argnums=0)(state, batch, rng)   # rng: the run's key; fold_in(rng, step)

Inside, for B objects of F views (batch layout: configs/data.py):
1. Frozen encoders (no gradient): VAE posterior sample of every view x scaling_factor -> latents [B*F, h, w, 4];
   CLIP text of the caption ids (the empty prompt's ids where text is dropped) -> context [B, 77, ctx]; CLIP vision
   hidden_states[-2] of the k retrieved images (uint8 -> resized to the tower's size when R differs -> /255 ->
   CLIP mean/std; all zeros where the image condition is dropped, the pipeline's negative) [B*k, T, emb].
2. Trainable: resampler -> image tokens [B, k*Q, ctx] (the pipeline's "(b n) q c -> b (n q) c"), repeated per view.
3. DDPM forward process with the release scheduler's alphas_cumprod: one timestep per object (uniform over
   [0, num_train_timesteps)), shared by its views as at sampling time; independent noise per view.
4. UNet eps-prediction with the paper's training fusion f = l * f_txt + 1 * f_ret in every decoupled cross-attention
   (§3.3; l = train.text_weight; inference weights (s, 1.5 - s) instead: models/attention.py), MSE in float32
   over the valid views only (view_mask); with train.microbatches > 1 the UNet part runs over that many pieces of
   the batch in sequence and their gradients add up (gradient accumulation: the same loss and gradient as one
   piece, a fraction of the activations).

3D / 2D rows in one static-shape batch. 3D objects (mode 0): F views with cameras, cross-view self-attention across
the F views. 2D objects (mode 1, the held-out-view objective): one target view (view 0), no camera. MVDream trains
2D images with num_frames=1 and no camera embedding; with static shapes we keep the F slots and instead
(a) multiply the camera embedding by camera_mask (0 for 2D rows: the embedding is off, not a zero-camera embedding),
(b) mask attn1 block-diagonally per view for 2D objects (`single_view`), so view 0 attends only to itself exactly as
    with num_frames=1, and (c) weight the loss by view_mask, so the padding views 1..F-1 get no loss. GroupNorm and
    every other layer act per row, so padding never reaches view 0. (The padding views still cost compute.)

The VAE and CLIP vision encoders run over at most train.encode_chunk_rows rows per device at a time (0: all at
once): forward-only, so pieces in sequence bound their activations without changing a number.
Step 1 runs in the same XLA program as the rest (train.encoders="in_step") or as its own program before it
("separate": `encode_step`, then `train_step(..., encoded)`): the same maths and keys, but the update program holds
only the UNet and resampler, so it compiles faster and its temporaries never include encoder activations.

Classifier-free guidance dropout, per object, three exclusive events (IP-Adapter): text only, image only, both.
Optimisation: grads of the trainable subtree only; non-finite loss or grad norm -> the update is not applied and
`skipped_steps` counts it (params, optimizer state and EMA keep their old values, the step counter still advances).
With train.ema_decay > 0 the state's EMA of the trainable weights follows each applied update (train/ema.py).
"""

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mvrag_jax.models import clip, resampler, vae
from mvrag_jax.models.attention import FusionWeights
from mvrag_jax.models.unet import MultiViewUNet
from mvrag_jax.sharding import batch_pieces, map_batch_chunks
from mvrag_jax.train import ema as ema_lib
from mvrag_jax.train.state import ModelConfigs, TrainState
from mvrag_jax.train.trainable import merge_params

MODE_3D = 0  # = data_pipelines.transforms.MODE_3D (the batch's `mode` field); 1 is 2D
LOSS_INPUTS = ("mode", "camera", "camera_mask", "view_mask")  # the batch fields `diffusion_loss` reads


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """Everything the step needs besides the model configs, optimizer and arrays (bound with functools.partial)."""
    empty_input_ids: tuple[int, ...]    # token ids of "" (the unconditional prompt), from the batch's tokenizer
    alphas_cumprod: tuple[float, ...]   # [T] of the release DDPM schedule
    clip_mean: tuple[float, float, float]
    clip_std: tuple[float, float, float]
    cfg_drop_text: float = 0.05
    cfg_drop_image: float = 0.05
    cfg_drop_both: float = 0.05
    text_weight: float = 0.5            # l of the training fusion l * f_txt + f_ret (paper §3.3; train.text_weight)
    ema_decay: float = 0.0              # train.ema_decay (train/ema.py); 0: the state holds no EMA
    image_tokens: bool = True           # False: no image tokens reach the UNet (the text-only base stage)
    encode_chunk_rows: int = 0          # VAE / CLIP vision rows per device at a time (sharding.map_batch_chunks)


def images_to_unit_range(images: jax.Array) -> jax.Array:
    """uint8 0..255 -> float32 [-1, 1]; float images (images_dtype="float32") are already in [-1, 1]."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 127.5 - 1.0
    return images.astype(jnp.float32)


def retrieved_pixel_values(retrieved: jax.Array, size: int, mean: tuple[float, ...], std: tuple[float, ...]
                           ) -> jax.Array:
    """uint8 [n, R, R, 3] -> CLIP pixel values [n, size, size, 3]: bicubic resize (antialiased) only when R != size,
    then rescale 1/255 and normalise, as CLIPImageProcessor does (its resize/crop happened on the host)."""
    x = retrieved.astype(jnp.float32)
    if x.shape[1:3] != (size, size):
        x = jnp.clip(jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bicubic", antialias=True), 0, 255)
    return (x / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def cfg_drops(rng: jax.Array, num: int, options: StepOptions) -> tuple[jax.Array, jax.Array]:
    """(drop_text, drop_image) [num] bool from one uniform per object: [0, pt) text, [pt, pt+pi) image,
    [pt+pi, pt+pi+pb) both."""
    u = jax.random.uniform(rng, (num,))
    text_only = u < options.cfg_drop_text
    image_only = (u >= options.cfg_drop_text) & (u < options.cfg_drop_text + options.cfg_drop_image)
    both = ((u >= options.cfg_drop_text + options.cfg_drop_image)
            & (u < options.cfg_drop_text + options.cfg_drop_image + options.cfg_drop_both))
    return text_only | both, image_only | both


def encode_frozen(models: ModelConfigs, params: dict, batch: dict, rng: jax.Array, drop_text: jax.Array,
                  drop_image: jax.Array, options: StepOptions) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(latents [B*F, h, w, c], context [B, 77, ctx], CLIP features [B*k, T, emb]) from the frozen encoders."""
    images = batch["images"]  # [B, F, H, W, 3]
    b, f = images.shape[:2]
    pixels = images_to_unit_range(images).reshape((b * f,) + images.shape[2:])  # [B*F, H, W, 3]
    mean, logvar = map_batch_chunks(lambda p: vae.encode(models.vae, params["vae"], p), pixels,
                                    options.encode_chunk_rows)
    latents = vae.sample_posterior(mean, logvar, rng) * models.vae.scaling_factor  # [B*F, h, w, c]

    empty = jnp.asarray(options.empty_input_ids, jnp.int32)[None]
    input_ids = jnp.where(drop_text[:, None], empty, batch["input_ids"])  # [B, 77]
    context = clip.encode_text(models.clip_text, params["clip_text"], input_ids)  # [B, 77, ctx]

    retrieved = batch["retrieved"]  # [B, k, R, R, 3]
    k = retrieved.shape[1]
    flat = retrieved.reshape((b * k,) + retrieved.shape[2:])
    pixel_values = retrieved_pixel_values(flat, models.clip_vision.image_size, options.clip_mean, options.clip_std)
    pixel_values = jnp.where(jnp.repeat(drop_image, k)[:, None, None, None], 0.0, pixel_values)
    features = map_batch_chunks(lambda p: clip.image_features(models.clip_vision, params["clip_vision"], p),
                                pixel_values, options.encode_chunk_rows)  # [B*k, T, emb]
    return jax.lax.stop_gradient((latents, context, features))


def diffusion_loss(trainable: dict, frozen: dict, batch: dict, latents: jax.Array, context: jax.Array,
                   features: jax.Array, t: jax.Array, noise: jax.Array, views_total: jax.Array, *,
                   models: ModelConfigs, options: StepOptions) -> tuple[jax.Array, dict]:
    """Masked eps-prediction squared error (float32) summed over these objects' valid views / `views_total` (the
    whole step's valid views: microbatches' losses then add up to the step's mean), and per-mode sums; grads flow
    into `trainable` only. t [B] timesteps, noise [B*F, h, w, c]."""
    params = merge_params(trainable, frozen)
    b = batch["mode"].shape[0]
    f, k = latents.shape[0] // b, features.shape[0] // b  # views and retrieved images per object
    tokens = None  # image_tokens=False: every attn2 is text cross-attention alone, as in text-only sampling
    if options.image_tokens:
        tokens = resampler.Resampler(models.resampler).apply({"params": params["resampler"]}, features)  # [B*k,Q,ctx]
        tokens = jnp.repeat(tokens.reshape(b, k * tokens.shape[1], tokens.shape[2]), f, axis=0)  # [B*F, k*Q, ctx]

    alphas = jnp.asarray(options.alphas_cumprod, jnp.float32)
    t_rows = jnp.repeat(t, f)  # [B*F]: one timestep per object, shared by its views
    a = alphas[t_rows][:, None, None, None]
    noisy = jnp.sqrt(a) * latents + jnp.sqrt(1.0 - a) * noise  # [B*F, h, w, c]

    is_3d = batch["mode"] == MODE_3D  # [B]
    camera = None
    if models.unet.camera_dim is not None:
        camera = batch["camera"].reshape(b * f, -1).astype(jnp.float32)  # [B*F, 16]
    eps = MultiViewUNet(models.unet).apply(
        {"params": params["unet"]}, noisy, t_rows.astype(jnp.float32), jnp.repeat(context, f, axis=0), camera,
        tokens, FusionWeights.training(options.text_weight),
        camera_mask=jnp.repeat(batch["camera_mask"], f).astype(jnp.float32), single_view=~is_3d)

    per_view = jnp.mean(jnp.square(eps.astype(jnp.float32) - noise), axis=(1, 2, 3))  # [B*F]
    weight = batch["view_mask"].reshape(-1).astype(jnp.float32)  # [B*F]
    weight_3d = weight * jnp.repeat(is_3d, f)
    sums = {"views": weight.sum(), "views_3d": weight_3d.sum(), "loss_sum": (per_view * weight).sum(),
            "loss_3d_sum": (per_view * weight_3d).sum()}
    return sums["loss_sum"] / jnp.maximum(views_total, 1.0), sums


def loss_and_grads(trainable: dict, frozen: dict, batch: dict, latents: jax.Array, context: jax.Array,
                   features: jax.Array, rng: jax.Array, *, models: ModelConfigs, options: StepOptions,
                   microbatches: int = 1, grad_shardings: Any = None) -> tuple[jax.Array, dict, dict]:
    """(mean loss, per-mode sums, grads of the trainable params) of the whole batch, computed in `microbatches`
    sequential pieces (a lax.scan accumulating float32 grads: activations of one piece live at a time, the same
    maths as one piece). Timesteps and noise are drawn for the whole batch first, so the pieces change no random
    number. Every piece holds the same number of each device's own objects (sharding.batch_pieces: no data moves);
    `grad_shardings` (the trainable params' shardings) pins the accumulator's layout."""
    b = batch["mode"].shape[0]
    t_key, noise_key = jax.random.split(rng)
    t = jax.random.randint(t_key, (b,), 0, len(options.alphas_cumprod))
    noise = jax.random.normal(noise_key, latents.shape, jnp.float32)
    views_total = batch["view_mask"].astype(jnp.float32).sum()
    grad_fn = jax.value_and_grad(diffusion_loss, has_aux=True)
    bind = functools.partial(grad_fn, models=models, options=options)
    if microbatches == 1:  # no loop: the default program stays one straight-line graph
        (loss, sums), grads = bind(trainable, frozen, batch, latents, context, features, t, noise, views_total)
        return loss, sums, grads

    # per object, so a piece takes whole objects: rows [B*F] / [B*k] -> [B, F] / [B, k]
    per_object = {"batch": {name: batch[name] for name in LOSS_INPUTS if name in batch},
                  "latents": latents.reshape((b, -1) + latents.shape[1:]), "context": context,
                  "features": features.reshape((b, -1) + features.shape[1:]), "t": t,
                  "noise": noise.reshape((b, -1) + noise.shape[1:])}
    pieces = jax.tree.map(lambda x: batch_pieces(x, microbatches), per_object)
    rows = lambda x: x.reshape((-1,) + x.shape[2:])  # [objects, F, ...] -> [objects*F, ...]
    pin = (lambda g: g) if grad_shardings is None else (
        lambda g: jax.tree.map(jax.lax.with_sharding_constraint, g, grad_shardings))

    def accumulate(carry, piece):
        grads_sum, sums_sum = carry
        (_, sums), grads = bind(trainable, frozen, piece["batch"], rows(piece["latents"]), piece["context"],
                                rows(piece["features"]), piece["t"], rows(piece["noise"]), views_total)
        return (pin(jax.tree.map(jnp.add, grads_sum, grads)), jax.tree.map(jnp.add, sums_sum, sums)), None

    zeros = pin(jax.tree.map(jnp.zeros_like, trainable))  # float32, as every trainable param
    zero_sums = {name: jnp.zeros((), jnp.float32) for name in ("views", "views_3d", "loss_sum", "loss_3d_sum")}
    (grads, sums), _ = jax.lax.scan(accumulate, (zeros, zero_sums), pieces)
    return sums["loss_sum"] / jnp.maximum(views_total, 1.0), sums, grads


ENCODERS = ("vae", "clip_text", "clip_vision")    # the frozen encoders' param components
ENCODER_INPUTS = ("images", "retrieved", "input_ids")  # the batch fields only they read


def step_keys(rng: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(CFG-drop, VAE-sample, noise) keys of one step: `rng` is the run's key, the same every step."""
    drop_key, latent_key, loss_key = jax.random.split(jax.random.fold_in(rng, step), 3)
    return drop_key, latent_key, loss_key


def encode_step(encoder_params: dict, batch: dict, rng: jax.Array, step: jax.Array, *, models: ModelConfigs,
                options: StepOptions) -> dict:
    """The frozen-encoder half of a step as its own program (train.encoders="separate"): {latents, context,
    features} exactly as `train_step` computes them in-graph for the same (rng, step)."""
    drop_key, latent_key, _ = step_keys(rng, step)
    drop_text, drop_image = cfg_drops(drop_key, batch["images"].shape[0], options)
    latents, context, features = encode_frozen(models, encoder_params, batch, latent_key, drop_text, drop_image,
                                               options)
    return {"latents": latents, "context": context, "features": features}


def train_step(state: TrainState, batch: dict, rng: jax.Array, encoded: dict | None = None, *,
               models: ModelConfigs, tx: optax.GradientTransformation, schedule: Callable[[Any], Any],
               options: StepOptions, microbatches: int = 1, grad_shardings: Any = None
               ) -> tuple[TrainState, dict]:
    """One optimizer step. `rng` is the run's key (the same every step): the step key is fold_in(rng, state.step).
    `encoded` (from `encode_step`) replaces the in-graph encoders; the batch may then lack ENCODER_INPUTS.
    `microbatches` > 1 accumulates the gradient over that many pieces of the batch (`loss_and_grads`)."""
    drop_key, latent_key, loss_key = step_keys(rng, state.step)
    drop_text, drop_image = cfg_drops(drop_key, batch["mode"].shape[0], options)
    if encoded is None:
        params = merge_params(state.trainable, state.frozen)
        latents, context, features = encode_frozen(models, params, batch, latent_key, drop_text, drop_image,
                                                   options)
    else:
        latents, context, features = encoded["latents"], encoded["context"], encoded["features"]

    loss, sums, grads = loss_and_grads(state.trainable, state.frozen, batch, latents, context, features, loss_key,
                                       models=models, options=options, microbatches=microbatches,
                                       grad_shardings=grad_shardings)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    skipped = (~finite).astype(jnp.int32)
    applied = state.step - state.skipped_steps  # = optax's update count, which the schedule reads
    ema = state.ema
    if options.ema_decay > 0:
        if not state.ema:
            raise ValueError("StepOptions.ema_decay > 0 but the state holds no EMA; build the state with the "
                             "trainer of the same config (train.ema_decay)")
        ema = keep(ema_lib.update(state.ema, trainable, applied, options.ema_decay), state.ema)
    new_state = state.replace(step=state.step + 1, trainable=keep(trainable, state.trainable),
                              opt_state=keep(opt_state, state.opt_state), ema=ema,
                              skipped_steps=state.skipped_steps + skipped)
    views_2d = sums["views"] - sums["views_3d"]
    metrics = {
        "loss": loss,
        "loss_3d": sums["loss_3d_sum"] / jnp.maximum(sums["views_3d"], 1.0),  # 0 when the batch has no 3D view
        "loss_2d": (sums["loss_sum"] - sums["loss_3d_sum"]) / jnp.maximum(views_2d, 1.0),
        "views_3d": sums["views_3d"], "views_2d": views_2d,
        "grad_norm": grad_norm,
        "learning_rate": jnp.asarray(schedule(applied), jnp.float32),
        "skipped": skipped,
        "skipped_steps": new_state.skipped_steps,
        "drop_text_fraction": drop_text.mean(), "drop_image_fraction": drop_image.mean(),
    }
    return new_state, metrics


def alphas_cumprod_tuple(table: np.ndarray) -> tuple[float, ...]:
    return tuple(float(a) for a in np.asarray(table, np.float32))
