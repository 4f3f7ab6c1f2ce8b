"""`mvrag generate`: prompts x seeds -> multiview images on disk; batched, resumable, split over hosts.

    mvrag generate --release DIR --prompt "a red car" --retrieved IMAGES_DIR --out OUT
    mvrag generate --ckpt CKPT --prompts prompts.jsonl --index IDX --seeds 0,1,2 --batch 8 --out OUT

Every object (one prompt with one seed) gets a folder OUT/<index>_<slug>_s<seed>/ holding view_0.png ...,
grid.png (the retrieved images, then the views) and record.json (every setting, the retrieved files, the fusion
weight, per-stage timings). record.json is written last and atomically: it marks the object complete, and a run
started again skips complete objects. The prompt file is streamed and results are written as each batch finishes,
so memory stays flat over any number of prompts.

Relevance threshold (paper §3.5, off by default as in the official code): --relevance_threshold T keeps the --index
hits whose prompt-caption similarity is >= T (retrieval/relevance.py); an object left with none is generated
text-only. record.json's retrieval.relevance lists the kept and dropped images with their similarities.

Prompt files: one prompt per line, or JSON lines `{"prompt": "...", "retrieved": "folder"}` whose folder (relative
to the prompt file) replaces --retrieved/--index for that prompt. Blank lines are ignored.

Several JAX processes (multi-host): process p takes the objects whose number is p modulo the process count and
shards its batches over its own local devices, so hosts never wait for each other and uneven shares or partly
resumed runs cannot deadlock; all write to the shared OUT.
"""

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from mvrag_jax.inputs import images
from mvrag_jax.errors import MvragError, PathNotFoundError, ensure_writable_dir

_LOG = logging.getLogger(__name__)

RECORD = "record.json"
RECORD_FORMAT = 1
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # flag spelling -> Pipeline.load dtype


class GenerateError(MvragError, ValueError):
    """Generation cannot run as asked; the message names the flag and the fix."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the user chose for every object of a run (recorded in each record.json)."""

    steps: int = 50
    prior_steps: int = 10
    guidance: float = 5.0
    elevation: float = 15.0
    dtype: str = "fp32"
    use_prior: bool = True
    fusion_weight: float | None = None
    k: int = 4
    require_retrieval: bool = False
    batch: int = 1
    # Paper §3.5: drop index hits whose prompt-caption similarity is below this (K' <= K; none left: text-only).
    # None = off, as in the official code, which conditions on every retrieved image (retrieval/relevance.py).
    relevance_threshold: float | None = None
    relevance_clip: str | None = None  # CLIPModel folder for CLIP text-text similarity; None: normalised BM25

    def check(self) -> "Settings":
        if self.steps < 1:
            raise GenerateError(f"--steps {self.steps}: pass at least 1 denoising step (the paper uses 50)")
        if self.prior_steps < 1:
            raise GenerateError(f"--prior_steps {self.prior_steps}: pass at least 1 (the official default is 10)")
        if not self.guidance >= 1:
            raise GenerateError(f"--guidance {self.guidance}: classifier-free guidance must be >= 1 "
                                "(1 disables it; the paper uses 5)")
        if self.dtype not in DTYPES:
            raise GenerateError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if self.k < 1:
            raise GenerateError(f"--k {self.k}: retrieve at least 1 image (the paper uses 4)")
        if self.batch < 1:
            raise GenerateError(f"--batch {self.batch}: pass at least 1 object per batch")
        if self.fusion_weight is not None and not self.fusion_weight >= 0:
            raise GenerateError(f"--fusion_weight {self.fusion_weight}: pass a weight >= 0")
        if not self.use_prior and self.fusion_weight is None:
            raise GenerateError("--no_prior skips the pass that computes the fusion weight; also pass "
                                "--fusion_weight X")
        if self.relevance_threshold is None and self.relevance_clip is not None:
            raise GenerateError("--relevance_clip only scores hits for --relevance_threshold; pass a threshold too")
        if self.relevance_threshold is not None:
            from mvrag_jax.retrieval.relevance import check_threshold, measure_of
            check_threshold(self.relevance_threshold, measure_of(self.relevance_clip))
        return self

    def sampling_options(self) -> Any:
        from mvrag_jax.pipeline import SamplingOptions
        return SamplingOptions(num_inference_steps=self.steps, prior_steps=self.prior_steps,
                               guidance_scale=float(self.guidance), elevation=float(self.elevation),
                               use_prior=self.use_prior, fusion_weight=self.fusion_weight)


# ---- prompts -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PromptEntry:
    index: int               # position among the run's prompts (blank lines not counted)
    prompt: str
    retrieved: str | None = None  # per-prompt image folder (absolute), or None: the run's retrieval source


def check_prompt(prompt: Any, where: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise GenerateError(f"{where}: the prompt is empty; write a description such as \"a red vintage car\"")
    return prompt.strip()


def parse_prompt_line(line: str, index: int, where: str, base: pathlib.Path) -> PromptEntry:
    """One non-blank line of a prompt file: plain text, or a JSON object with "prompt" and optional "retrieved"."""
    text = line.strip()
    if not text.startswith("{"):
        return PromptEntry(index, check_prompt(text, where))
    try:
        item = json.loads(text)
    except json.JSONDecodeError as e:
        raise GenerateError(f"{where}: not valid JSON ({e.msg}); write {{\"prompt\": \"...\"}} or plain text") from None
    unknown = sorted(set(item) - {"prompt", "retrieved"})
    if unknown:
        raise GenerateError(f"{where}: unknown keys {unknown}; a JSON line holds \"prompt\" and optionally "
                            "\"retrieved\" (an image folder)")
    folder = item.get("retrieved")
    if folder is not None and (not isinstance(folder, str) or not folder):
        raise GenerateError(f"{where}: \"retrieved\" must be a folder path, got {folder!r}")
    return PromptEntry(index, check_prompt(item.get("prompt"), where),
                       None if folder is None else str((base / os.path.expanduser(folder)).absolute()))


def read_prompts(path: str | os.PathLike) -> Iterator[PromptEntry]:
    """Stream the entries of a prompt file (one line in memory at a time)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise PathNotFoundError(f"prompt file {path} does not exist; pass --prompts FILE (one prompt per line)")
    index = 0
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield parse_prompt_line(line, index, f"{path}:{number}", path.parent.absolute())
                index += 1


def prompt_source(prompt: str | None, prompts: str | None) -> Callable[[], Iterable[PromptEntry]]:
    """A re-iterable source of the run's prompts: --prompt TEXT or --prompts FILE (exactly one)."""
    if (prompt is None) == (prompts is None):
        raise GenerateError("pass exactly one of --prompt TEXT or --prompts FILE")
    if prompt is not None:
        entry = PromptEntry(0, check_prompt(prompt, "--prompt"))
        return lambda: [entry]
    if not pathlib.Path(prompts).is_file():
        raise PathNotFoundError(f"prompt file {prompts} does not exist; pass --prompts FILE (one prompt per line)")
    return lambda: read_prompts(prompts)


def parse_seeds(values: Sequence[str | int]) -> tuple[int, ...]:
    try:
        seeds = tuple(int(v) for v in values)
    except ValueError:
        raise GenerateError(f"--seeds {','.join(map(str, values))}: pass comma-separated integers, e.g. 0,1,2") \
            from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise GenerateError(f"--seeds {list(seeds)}: pass one or more distinct non-negative integers")
    return seeds


# ---- objects and batches -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ObjectJob:
    number: int         # prompt index x len(seeds) + seed position: the unit hosts split by
    entry: PromptEntry
    seed: int
    name: str           # output folder name


def slugify(text: str, max_length: int = 40) -> str:
    """A filename-safe, lower-case slug of a prompt (ASCII letters, digits and single dashes)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_length].rstrip("-")
    return slug or "prompt"


def object_name(entry: PromptEntry, seed: int) -> str:
    """`<index>_<slug>_<hash>_s<seed>`: stable across runs; the hash tells apart prompts sharing a slug."""
    digest = hashlib.sha1(entry.prompt.encode()).hexdigest()[:8]
    return f"{entry.index:05d}_{slugify(entry.prompt)}_{digest}_s{seed}"


def plan_objects(entries: Iterable[PromptEntry], seeds: Sequence[int], process_index: int = 0,
                 process_count: int = 1) -> Iterator[ObjectJob]:
    """This process's objects, in order: object n goes to process n mod process_count."""
    for entry in entries:
        for position, seed in enumerate(seeds):
            number = entry.index * len(seeds) + position
            if number % process_count == process_index:
                yield ObjectJob(number, entry, seed, object_name(entry, seed))


def batched_by(items: Iterable[Any], size: int, key: Callable[[Any], Any]) -> Iterator[list[Any]]:
    """Batches of `size` items sharing key(item); the partial batches follow at the end, smallest key first.

    Keyed by the number of retrieved images, every device call has one shape per k, so nothing recompiles when
    text-only and retrieval objects, or folders with fewer than k images, are mixed. At most size - 1 items per
    distinct key wait in memory.
    """
    pending: dict[Any, list[Any]] = {}
    for item in items:
        batch = pending.setdefault(key(item), [])
        batch.append(item)
        if len(batch) == size:
            yield pending.pop(key(item))
    for k in sorted(pending):
        yield pending[k]


def padded_batch_size(batch: int, data_parallel: int) -> int:
    """--batch rounded up to a multiple of the data-parallel size: every call has this many objects."""
    return -(-batch // data_parallel) * data_parallel


def pad_to(items: Sequence[Any], size: int) -> list[Any]:
    """`items` repeated at the end up to `size` (same shapes, so the last batch reuses the compiled program)."""
    if not items or len(items) > size:
        raise ValueError(f"cannot pad {len(items)} items to {size}")
    return list(items) + [items[-1]] * (size - len(items))


# ---- outputs -------------------------------------------------------------------------------------------------------
def is_complete(out: pathlib.Path, name: str) -> bool:
    return (out / name / RECORD).is_file()


def _replace_atomically(path: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_png(path: pathlib.Path, image: np.ndarray) -> None:
    _replace_atomically(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def write_json(path: pathlib.Path, value: Any) -> None:
    _replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(value, indent=1)))


def grid_image(retrieved: Sequence[np.ndarray], views: np.ndarray, gap: int = 4) -> np.ndarray:
    """One row: the retrieved images (padded square, resized to the view size), a gap, then the views."""
    size = views.shape[1]
    cells = [images.pil_resize(images.pad_to_square(images.to_rgb(image)), size, size, Image.Resampling.BICUBIC)
             for image in retrieved]
    if cells:
        cells.append(np.full((size, gap, 3), 255, np.uint8))
    cells.extend(views)
    return np.concatenate(cells, axis=1)


def write_object(out: pathlib.Path, job: ObjectJob, views: np.ndarray, retrieved: Sequence[Any],
                 record: dict[str, Any]) -> pathlib.Path:
    """Write one object's views, grid and (last) its record; returns the object folder. The files go to a temporary
    sibling folder renamed into place at the end, so a full disk or a kill never leaves part of an object."""
    folder, tmp = out / job.name, out / f".{job.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        names = [f"view_{i}.png" for i in range(len(views))]
        for name, view in zip(names, views):
            write_png(tmp / name, view)
        write_png(tmp / "grid.png", grid_image([r.image for r in retrieved], views))
        write_json(tmp / RECORD, {**record, "views": names, "grid": "grid.png"})
        if folder.exists():  # an unfinished object (no record) left by an older version
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# ---- retrieval -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Retrieval:
    """What one object was conditioned on: the images (empty = text-only) and where they came from."""

    hits: tuple[Any, ...]     # retrieval.RetrievedImage (after the relevance threshold: the K' kept)
    source: str | None        # "folder:/abs" | "index:/abs" | None
    notice: str | None = None  # why the object is text-only, when it is
    relevance: dict[str, Any] | None = None  # relevance.Judgement.record() when a threshold is set


def make_retrieve(folder: str | None, index: str | None, k: int, require: bool,
                  relevance: Any = None) -> Callable[[PromptEntry], Retrieval]:
    """entry -> Retrieval: the entry's own folder, else --retrieved, else --index, else text-only.

    An empty or missing-image source makes the object text-only with a notice, or, with --require_retrieval, an error.
    `relevance` (retrieval.relevance.Relevance) filters index hits by prompt-caption similarity; when it drops them
    all the object is text-only the same way. A folder's images have no captions and are kept unscored.
    """
    if folder is not None and index is not None:
        raise GenerateError("pass at most one of --retrieved DIR and --index IDX")
    from mvrag_jax.retrieval import EmptyRetrievalError, open_retriever
    global_source = (f"folder:{pathlib.Path(folder).absolute()}" if folder is not None else
                     f"index:{pathlib.Path(index).absolute()}" if index is not None else None)

    @functools.lru_cache(maxsize=16)  # a prompt file may name many folders; keep the recent ones open
    def retriever(source: str) -> Any:
        kind, _, location = source.partition(":")
        return open_retriever(**{kind: location})

    def retrieve(entry: PromptEntry) -> Retrieval:
        source = f"folder:{entry.retrieved}" if entry.retrieved is not None else global_source
        judged = None
        if source is None:
            notice = "no retrieval source (--retrieved, --index or a \"retrieved\" folder in the prompt file)"
        else:
            try:
                found = retriever(source)
                hits = tuple(found.retrieve(entry.prompt, k))
            except EmptyRetrievalError as e:
                notice = str(e)
            else:
                if relevance is None:
                    return Retrieval(hits, source)
                judged = (relevance.judge(entry.prompt, hits, found) if source.startswith("index:")
                          else relevance.unjudged(hits))
                if not judged.fell_back:
                    return Retrieval(tuple(hit for hit, _ in judged.kept), source, relevance=judged.record())
                best = max(similarity for _, similarity in judged.dropped)
                notice = (f"no retrieved image reached --relevance_threshold {relevance.threshold} "
                          f"(best {relevance.measure} similarity {best:.4f}); retrieval attention is off")
        if require:
            raise GenerateError(f"prompt {entry.index} ({entry.prompt!r}): {notice}; with --require_retrieval every "
                                "object needs retrieved images (drop the flag to generate text-only)")
        return Retrieval((), source, f"text-only: {notice}", None if judged is None else judged.record())

    return retrieve


# ---- the run -------------------------------------------------------------------------------------------------------
def sampling_record(settings: Settings) -> dict[str, Any]:
    """The settings that change an object's images (a resumed run must match them; --batch may change)."""
    fields = ("steps", "prior_steps", "guidance", "elevation", "dtype", "use_prior", "fusion_weight", "k")
    record = {name: getattr(settings, name) for name in fields}
    if settings.relevance_threshold is not None:  # only then, so records of runs without it stay as they were
        clip_model = settings.relevance_clip and str(pathlib.Path(settings.relevance_clip).expanduser().absolute())
        record.update(relevance_threshold=settings.relevance_threshold, relevance_clip=clip_model)
    return record


def check_resumable(out: pathlib.Path, job: ObjectJob, expected: dict[str, Any]) -> None:
    recorded = json.loads((out / job.name / RECORD).read_text()).get("settings") or {}
    if recorded != expected:
        changed = sorted(k for k in {**recorded, **expected} if recorded.get(k) != expected.get(k))
        raise GenerateError(f"{out / job.name} was generated with other settings ({', '.join(changed)}: "
                            f"{[recorded.get(k) for k in changed]} vs now {[expected.get(k) for k in changed]}); "
                            "use a new --out or the same settings")


def generate_objects(pipeline: Any, options: Any, jobs: Iterable[ObjectJob], out: pathlib.Path,
                     retrieve: Callable[[PromptEntry], Retrieval], settings: Settings, *, call_size: int,
                     total: int | None = None, model: dict[str, str] | None = None, show_progress: bool = True,
                     request_type: Any = None) -> dict[str, int]:
    """Generate the incomplete `jobs` in batches of settings.batch objects, each call padded to `call_size`.

    `pipeline.generate(requests, options) -> (results, timings)` is the pipeline.Pipeline contract. Returns counts.
    """
    if request_type is None:
        from mvrag_jax.pipeline import ObjectRequest as request_type
    expected = sampling_record(settings)
    counts = {"generated": 0, "skipped": 0, "text_only": 0}
    bar = tqdm(total=total, unit="object", desc="generating", disable=not show_progress)

    def todo() -> Iterator[ObjectJob]:
        for job in jobs:
            if is_complete(out, job.name):
                check_resumable(out, job, expected)
                counts["skipped"] += 1
                bar.update(1)
            else:
                yield job

    def conditioned() -> Iterator[tuple[ObjectJob, Retrieval, float]]:
        for job in todo():
            start = time.perf_counter()
            cond = retrieve(job.entry)
            if cond.notice and cond.source is not None:  # no source at all was announced once, up front
                bar.write(f"{job.name}: {cond.notice}")
            yield job, cond, time.perf_counter() - start

    with bar:
        for batch in batched_by(conditioned(), settings.batch, key=lambda item: len(item[1].hits)):
            requests = [request_type(prompt=job.entry.prompt, retrieved=tuple(h.image for h in cond.hits),
                                     seed=job.seed) for job, cond, _ in batch]
            results, timings = pipeline.generate(pad_to(requests, call_size), options)
            for (job, cond, retrieve_s), result in zip(batch, results):  # padding results are dropped here
                record = {
                    "format": RECORD_FORMAT, "prompt": job.entry.prompt, "prompt_index": job.entry.index,
                    "seed": job.seed, "object": job.number, "model": model or {}, "settings": expected,
                    "retrieval": {"source": cond.source, "text_only": not cond.hits, "notice": cond.notice,
                                  "files": [{"path": h.path, "score": h.score, "caption": h.caption}
                                            for h in cond.hits], "relevance": cond.relevance},
                    "fusion_weight": result.fusion_weight, "similarity_score": result.similarity_score,
                    # retrieve: this object's seconds; the rest: seconds of its whole device call, which held
                    # batch_objects real objects padded to call_objects; compile is reported apart from the stages
                    "timings": {"retrieve": retrieve_s, "batch_objects": len(batch), "call_objects": call_size,
                                **{k: float(v) for k, v in timings.items()}},
                }
                write_object(out, job, np.asarray(result.images), cond.hits, record)
                counts["generated"] += 1
                counts["text_only"] += not cond.hits
                bar.update(1)
            bar.set_postfix(skipped=counts["skipped"])
    return counts


def run(*, out: str | os.PathLike, ckpt: str | None = None, release: str | None = None, prompt: str | None = None,
        prompts: str | None = None, retrieved: str | None = None, index: str | None = None,
        seeds: Sequence[int | str] = (0,), settings: Settings = Settings(), show_progress: bool = True
        ) -> dict[str, Any]:
    """`mvrag generate`: load the model, generate every missing object of this process into `out`; returns a summary.

    Bad input raises GenerateError / FileNotFoundError before the model is loaded.
    """
    import jax
    settings.check()
    if (ckpt is None) == (release is None):
        raise GenerateError("pass exactly one of --ckpt CKPT_DIR (from `mvrag convert`) or --release DIR")
    model_dir = pathlib.Path(ckpt if ckpt is not None else release).expanduser().absolute()
    if not model_dir.is_dir():
        raise PathNotFoundError(f"{'checkpoint' if ckpt is not None else 'release'} folder {model_dir} does not "
                                "exist; pass the --out folder of `mvrag convert` or an official release folder")
    if ckpt is not None and (model_dir / "checkpoints").is_dir():  # a `mvrag train` workdir (train/checkpoint.py)
        raise GenerateError(f"--ckpt {model_dir} is a training workdir; export its weights first: `mvrag export "
                            f"--ckpt {model_dir} --out DIR`, then `mvrag generate --release DIR ...`")
    source = prompt_source(prompt, prompts)
    seeds = parse_seeds(seeds)
    out = pathlib.Path(out).expanduser().absolute()
    process, processes = jax.process_index(), jax.process_count()
    plan = lambda: plan_objects(source(), seeds, process, processes)
    if settings.relevance_threshold is not None and index is None:
        raise GenerateError("--relevance_threshold filters the hits of --index IDX by their captions; images from "
                            "--retrieved or a prompt file's folders have no captions: pass --index or drop the "
                            "threshold")
    expected = sampling_record(settings)
    total = done = num_prompts = 0
    for entry in source():  # a first streamed pass validates every line before any work, and sizes the progress bar
        num_prompts += 1
        if settings.require_retrieval and entry.retrieved is None and retrieved is None and index is None:
            raise GenerateError(f"prompt {entry.index} ({entry.prompt!r}) has no retrieval source and "
                                "--require_retrieval is set; pass --retrieved DIR or --index IDX")
        for job in plan_objects([entry], seeds, process, processes):
            total += 1
            if is_complete(out, job.name):
                check_resumable(out, job, expected)  # refused before any work, even when nothing is left to do
                done += 1
    if num_prompts == 0:
        raise GenerateError(f"{prompts} holds no prompt; write one prompt per line")
    relevance = None
    if settings.relevance_threshold is not None:
        from mvrag_jax.retrieval.relevance import open_relevance
        relevance = open_relevance(settings.relevance_threshold, index=index, clip_model=settings.relevance_clip)
    retrieve = make_retrieve(retrieved, index, settings.k, settings.require_retrieval, relevance)
    if retrieved is None and index is None:
        _LOG.warning("no --retrieved or --index: objects without a \"retrieved\" folder are generated text-only")
    summary = {"out": str(out), "objects": total, "process": process, "processes": processes}
    if done == total:  # nothing left: no model load, no compile
        return {**summary, "generated": 0, "skipped": done, "text_only": 0}
    ensure_writable_dir(out, "--out")  # a read-only or full disk, or a file in the way: before the model loads
    from mvrag_jax.pipeline import Pipeline
    from mvrag_jax.sharding import make_mesh
    # Local devices only: each host runs its own share independently (see the module docstring).
    mesh = make_mesh(data=-1, fsdp=1, tensor=1, devices=jax.local_devices())
    kind = "ckpt" if ckpt is not None else "release"
    pipeline = Pipeline.load(**{kind: str(model_dir)}, dtype=DTYPES[settings.dtype], mesh=mesh)
    counts = generate_objects(pipeline, settings.sampling_options(), plan(), out, retrieve, settings,
                              call_size=padded_batch_size(settings.batch, mesh.shape["data"]), total=total,
                              model={kind: str(model_dir)}, show_progress=show_progress)
    return {**summary, **counts}
