"""IND-Eval (the paper's Table 3): objects with ground-truth views, scored for reconstruction (PSNR, SSIM, LPIPS
against the ground-truth view at the same camera) and text-image alignment (CLIP, SigLIP; eval/alignment.py).

Folder layout (`--ind_eval DIR`), one folder per object:

    DIR/<object_id>/prompt.txt            the text prompt
    DIR/<object_id>/views/view_<i>.png    ground-truth renders at the generation cameras, in the generated views'
                                          order (i = 0..V-1: the model's 4 orthogonal azimuths at its elevation)
    DIR/<object_id>/retrieved/<img>       the conditioning images (the paper: 4 LAION-400M hits by BM25)
    DIR/<object_id>/masks/view_<i>.png    optional: object masks of the ground-truth views (white = object)

The generated views (`--images VIEWS`, VIEWS/<object_id>/view_<i>.png, or generated with --ckpt) pair with the
ground-truth views by index; an object needs as many ground-truth views as generated ones.

Masks (C.3: the paper compares segmented object views): where masks/ exists, every pixel outside the object mask is
set to white in BOTH the ground-truth and the generated view before PSNR / SSIM / LPIPS, so only the object region
(as the ground truth places it) is compared. Without masks the whole frame counts: a background that differs from
the render's (the generator's grey against a white render, say) lowers PSNR / SSIM and raises LPIPS whatever the
object looks like; the report says which objects were masked.
"""

import dataclasses
import pathlib
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from mvrag_jax.eval import metrics, reconstruction
from mvrag_jax.eval.alignment import clipscore
from mvrag_jax.eval.dataset import EvalDataset, EvalPrompt, SPLIT_FOLDERS
from mvrag_jax.errors import PathNotFoundError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MASKED_FILL = 255
METRICS = ("psnr", "ssim", "lpips", "clip_text", "siglip_text")
LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "clip_text": "CLIP text-image (CLIPScore)",
          "siglip_text": "SigLIP text-image (CLIPScore scale)"}
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "clip_text": True, "siglip_text": True}
# Table 3 of the paper (IND-Eval).
PAPER = {"MV-RAG": {"psnr": 16.63, "ssim": 0.730, "lpips": 0.362, "clip_text": 64.48, "siglip_text": 35.34},
         "MVDream": {"psnr": 16.95, "ssim": 0.717, "lpips": 0.363, "clip_text": 64.25, "siglip_text": 34.81}}


@dataclasses.dataclass(frozen=True)
class IndObject:
    object_id: str
    prompt: str
    views: tuple[np.ndarray, ...]            # ground truth, uint8 [h, w, 3]
    masks: tuple[np.ndarray, ...] | None     # bool [h, w] per view, or None
    retrieved: tuple[np.ndarray, ...]


def _rgb(path: pathlib.Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _indexed(folder: pathlib.Path) -> list[pathlib.Path]:
    from mvrag_jax.eval.run import VIEW_FILE
    matches = [(VIEW_FILE.match(p.name), p) for p in folder.iterdir()]
    return [p for _, p in sorted((int(m.group(1)), p) for m, p in matches if m)]


def read_ind_eval(root: str | pathlib.Path) -> tuple[list[IndObject], list[dict]]:
    """The objects of an IND-Eval folder, and the folders skipped (with the reason)."""
    root = pathlib.Path(root).expanduser().absolute()
    if not root.is_dir():
        raise PathNotFoundError(f"IND-Eval folder {root} does not exist; see mvrag_jax/eval/ind_eval.py for the layout")
    objects, skipped = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        prompt_file, views_dir = folder / "prompt.txt", folder / "views"
        if not prompt_file.is_file() or not views_dir.is_dir() or not _indexed(views_dir):
            skipped.append({"item": folder.name, "reason": "needs prompt.txt and views/view_<i>.png"})
            continue
        views = [_rgb(p) for p in _indexed(views_dir)]
        masks = None
        if (folder / "masks").is_dir():
            files = _indexed(folder / "masks")
            if len(files) != len(views):
                skipped.append({"item": folder.name, "reason": f"masks/ has {len(files)} masks for {len(views)} views"})
                continue
            masks = tuple(np.asarray(Image.open(p).convert("L")) >= 128 for p in files)
        retrieved_dir = folder / "retrieved"
        retrieved = [_rgb(p) for p in sorted(retrieved_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES] \
            if retrieved_dir.is_dir() else []
        objects.append(IndObject(folder.name, prompt_file.read_text().strip(), tuple(views), masks, tuple(retrieved)))
    if not objects:
        raise UsageError(f"IND-Eval folder {root} has no usable object ({skipped[:3]}); see mvrag_jax/eval/ind_eval.py")
    return objects, skipped


def as_eval_dataset(name: str, objects: Sequence[IndObject]) -> EvalDataset:
    """The objects as an EvalDataset, so eval/run.py can generate their views (retrieved = conditioning)."""
    return EvalDataset(name, tuple(EvalPrompt(o.object_id, o.prompt, o.retrieved, o.views, SPLIT_FOLDERS)
                                   for o in objects), ())


def _masked(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return image
    out = image.copy()
    out[~mask] = MASKED_FILL
    return out


@dataclasses.dataclass(frozen=True)
class IndScorers:
    lpips: Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], np.ndarray] | None
    clip: Any | None       # alignment.ClipDual or Siglip: .text(prompts), .images(pictures)
    siglip: Any | None
    missing: dict[str, str]


def score_object(obj: IndObject, generated: np.ndarray, scorers: IndScorers) -> dict[str, Any]:
    if len(generated) > len(obj.views):
        raise UsageError(f"object {obj.object_id}: {len(generated)} generated views but {len(obj.views)} ground-truth "
                         "views; IND-Eval pairs them by index")
    hw = generated.shape[1:3]
    gt = [reconstruction.match_size(v, hw) for v in obj.views[:len(generated)]]
    masks = None if obj.masks is None else [np.asarray(Image.fromarray(m).resize((hw[1], hw[0]), Image.Resampling.NEAREST))
                                            for m in obj.masks[:len(generated)]]
    pairs = [(_masked(g, None if masks is None else masks[i]), _masked(t, None if masks is None else masks[i]))
             for i, (g, t) in enumerate(zip(generated, gt))]
    row = {"object_id": obj.object_id, "prompt": obj.prompt, "views": len(generated), "masked": masks is not None,
           "psnr": float(np.mean([min(reconstruction.psnr(g, t), 100.0) for g, t in pairs])),
           "ssim": float(np.mean([reconstruction.ssim(g, t) for g, t in pairs]))}
    if scorers.lpips is not None:
        row["lpips"] = float(np.mean(scorers.lpips([g for g, _ in pairs], [t for _, t in pairs])))
    for name, model in (("clip_text", scorers.clip), ("siglip_text", scorers.siglip)):
        if model is not None:
            row[name], row[f"{name}_cos"] = clipscore(model.text([obj.prompt])[0], model.images(list(generated)))
    return row


def summarise(rows: Sequence[dict], missing: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Metric -> {mean, n, ci95, missing} (bootstrap over objects), as eval/score.py's entries."""
    out = {}
    for name in METRICS:
        values = [r[name] for r in rows if name in r]
        if not values:
            out[name] = {"mean": None, "n": 0, "ci95": None, "missing": missing.get(name, "not computed")}
            continue
        ci = metrics.bootstrap_ci(np.asarray(values))
        out[name] = {"mean": float(np.mean(values)), "n": len(values), "ci95": None if ci is None else list(ci),
                     "missing": None}
    return out


def score_ind(objects: Sequence[IndObject], generated: dict[str, np.ndarray], scorers: IndScorers,
              show_progress: bool = True) -> tuple[list[dict], dict[str, dict[str, Any]], list[dict]]:
    """(rows, summary, skipped): objects without generated views are skipped with the reason."""
    rows, skipped = [], []
    for obj in tqdm(objects, desc="IND-Eval", unit="object", disable=not show_progress):
        if obj.object_id not in generated:
            skipped.append({"item": obj.object_id, "reason": "no generated views"})
            continue
        rows.append(score_object(obj, generated[obj.object_id], scorers))
    if not rows:
        raise UsageError("no IND-Eval object has generated views; name the view folders after the object ids")
    return rows, summarise(rows, scorers.missing), skipped


def load_scorers(*, lpips_dir: str | None, clip_model: str | None, siglip_dir: str | None) -> IndScorers:
    from mvrag_jax.eval import alignment
    missing = {}
    lp = clip = sig = None
    if lpips_dir:
        lp = reconstruction.lpips_metric(*reconstruction.load_lpips(lpips_dir))
    else:
        missing["lpips"] = "no LPIPS weights given (--lpips DIR: vgg16 + lpips v0.1 lin layers, see eval/reconstruction.py)"
    if clip_model:
        clip = alignment.load_clip(clip_model)
    else:
        missing["clip_text"] = "no CLIP model given (--clip_model DIR)"
    if siglip_dir:
        sig = alignment.load_siglip(siglip_dir)
    else:
        missing["siglip_text"] = "no SigLIP model given (--siglip DIR: a transformers SiglipModel folder)"
    return IndScorers(lp, clip, sig, missing)


def markdown(summary: dict[str, dict[str, Any]], rows: Sequence[dict]) -> str:
    masked = sum(r["masked"] for r in rows)
    lines = ["| metric | ours | 95 % CI | n | paper MV-RAG | paper MVDream |", "|---|---|---|---|---|---|"]
    for name in METRICS:
        e, arrow = summary[name], "higher" if HIGHER_IS_BETTER[name] else "lower"
        paper = " | ".join(f"{PAPER[m][name]}" for m in ("MV-RAG", "MVDream"))
        if e["missing"]:
            lines.append(f"| {LABELS[name]} ({arrow} is better) | missing: {e['missing']} | - | 0 | {paper} |")
            continue
        ci = "-" if e["ci95"] is None else f"[{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]"
        lines.append(f"| {LABELS[name]} ({arrow} is better) | {e['mean']:.3f} | {ci} | {e['n']} | {paper} |")
    lines += ["", f"{masked} of {len(rows)} objects compared inside their ground-truth masks (masks/); the others "
              "over the whole frame, background included (see mvrag_jax/eval/ind_eval.py)."]
    return "\n".join(lines)
