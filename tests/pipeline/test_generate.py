"""`mvrag generate`'s own layer: prompt files, names, host split, padding, outputs, resume, bad input.

The loop is driven here by a recording fake in place of the compiled pipeline (its contract is only
`generate(requests, options) -> (results, timings)`); the end-to-end run with the real pipeline is
tests/pipeline/test_generate_e2e.py.
"""

import dataclasses
import json
import types

import numpy as np
import pytest

from mvrag_jax.pipeline import generate
from mvrag_jax.cli import main
from tests.conftest import TINY_RELEASE


def test_slug_and_names_are_safe_stable_and_distinct():
    assert generate.slugify("A red vintage car, 3D!") == "a-red-vintage-car-3d"
    assert generate.slugify("日本の車") == "prompt"
    assert len(generate.slugify("x" * 200)) == 40
    a = generate.object_name(generate.PromptEntry(3, "a red car?"), 7)
    assert a == generate.object_name(generate.PromptEntry(3, "a red car?"), 7)
    assert a.startswith("00003_a-red-car_") and a.endswith("_s7")
    assert a != generate.object_name(generate.PromptEntry(3, "a red car!"), 7)  # same slug, other prompt


def test_prompt_file_plain_and_json_lines(tmp_path):
    path = tmp_path / "sub" / "prompts.jsonl"
    path.parent.mkdir()
    path.write_text('a red car\n\n{"prompt": "a blue chair", "retrieved": "imgs/chair"}\n  {"prompt": " a lamp "}\n')
    entries = list(generate.read_prompts(path))
    assert entries == [generate.PromptEntry(0, "a red car"),
                       generate.PromptEntry(1, "a blue chair", str(tmp_path / "sub" / "imgs" / "chair")),
                       generate.PromptEntry(2, "a lamp")]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "x"', "prompts.txt:2: not valid JSON"),
    ('{"prompt": "x", "image": "y"}', "unknown keys ['image']"),
    ('{"prompt": "  "}', "prompts.txt:2: the prompt is empty"),
    ('{"prompt": "x", "retrieved": 3}', "must be a folder path"),
])
def test_bad_prompt_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "prompts.txt"
    path.write_text(f"fine\n{line}\n")
    entries = generate.read_prompts(path)
    assert next(entries).prompt == "fine"  # streamed: the first line is yielded before the bad one is read
    with pytest.raises(generate.GenerateError, match=message.replace("[", r"\[").replace("]", r"\]")):
        next(entries)


def test_objects_split_over_processes_exactly_once():
    entries = [generate.PromptEntry(i, f"p{i}") for i in range(5)]
    every = [(j.number, j.seed) for j in generate.plan_objects(entries, (0, 1, 2))]
    assert [n for n, _ in every] == list(range(15))
    shares = [[j.number for j in generate.plan_objects(entries, (0, 1, 2), p, 4)] for p in range(4)]
    assert sorted(sum(shares, [])) == list(range(15)) and [len(s) for s in shares] == [4, 4, 4, 3]
    assert shares[1] == [1, 5, 9, 13]


def test_batches_pad_to_a_static_call_size():
    assert generate.padded_batch_size(3, 4) == 4 and generate.padded_batch_size(8, 4) == 8
    assert generate.padded_batch_size(5, 1) == 5
    assert generate.pad_to([1, 2], 4) == [1, 2, 2, 2]
    batches = list(generate.batched_by([3, 0, 3, 1, 0, 3, 0, 3], 2, key=lambda k: k))
    assert batches == [[3, 3], [0, 0], [3, 3], [0], [1]]  # one k per call; partial batches last


def test_seeds_and_settings_checks():
    assert generate.parse_seeds(["0", "1", "5"]) == (0, 1, 5)
    for bad in (["x"], [], ["1", "1"], ["-1"]):
        with pytest.raises(generate.GenerateError, match="--seeds"):
            generate.parse_seeds(bad)
    generate.Settings(guidance=1.0).check()  # guidance exactly 1 (no CFG) is allowed
    with pytest.raises(generate.GenerateError, match="--no_prior"):
        generate.Settings(use_prior=False).check()
    generate.Settings(use_prior=False, fusion_weight=0.5).check()


@dataclasses.dataclass(frozen=True)
class Hit:  # what a retriever returns (retrieval.RetrievedImage)
    path: str
    image: np.ndarray
    score: float | None = None
    caption: str | None = None


class FakePipeline:
    """Records calls; each object's views are a colour made from its seed and prompt length."""

    views, size = 4, 8

    def __init__(self):
        self.calls = []

    def generate(self, requests, options):
        self.calls.append(list(requests))
        results = []
        for r in requests:
            images = np.full((self.views, self.size, self.size, 3), (r.seed * 40 + len(r.prompt)) % 256, np.uint8)
            results.append(types.SimpleNamespace(images=images, fusion_weight=0.25 if r.retrieved else None,
                                                 similarity_score=0.5 if r.retrieved else None))
        return results, {"encode": 0.1, "prior": 0.2, "fusion": 0.01, "main": 1.0, "decode": 0.3, "compile": 9.0}


@dataclasses.dataclass(frozen=True)
class Request:
    prompt: str
    retrieved: tuple
    seed: int


def _run(out, pipeline, entries, seeds=(0, 1), batch=2, call_size=4, settings=None):
    settings = settings or generate.Settings(batch=batch, steps=2)
    red = np.zeros((6, 10, 3), np.uint8)
    red[..., 0] = 255

    def retrieve(entry):
        if "car" in entry.prompt:
            return generate.Retrieval((Hit("/imgs/a.png", red), Hit("/imgs/b.png", red, 0.9, "a car")), "folder:/imgs")
        return generate.Retrieval((), "folder:/empty", "text-only: /empty holds no image file")

    jobs = generate.plan_objects(entries, seeds)
    return generate.generate_objects(pipeline, None, jobs, out, retrieve, settings, call_size=call_size,
                                     model={"release": "/r"}, show_progress=False, request_type=Request)


def test_outputs_records_padding_and_resume(tmp_path):
    entries = [generate.PromptEntry(0, "a red car"), generate.PromptEntry(1, "a lamp")]
    pipeline = FakePipeline()
    counts = _run(tmp_path, pipeline, entries)
    assert counts == {"generated": 4, "skipped": 0, "text_only": 2}
    assert [len(c) for c in pipeline.calls] == [4, 4]  # 2 objects per batch, every call padded to 4
    assert pipeline.calls[0][2] == pipeline.calls[0][1]  # padding repeats the last request
    assert [{len(r.retrieved) for r in c} for c in pipeline.calls] == [{2}, {0}]  # one k per call
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 4 and folders[0].startswith("00000_a-red-car_") and folders[0].endswith("_s0")
    car = tmp_path / folders[0]
    assert sorted(p.name for p in car.iterdir()) == ["grid.png", "record.json"] + [f"view_{i}.png" for i in range(4)]
    record = json.loads((car / "record.json").read_text())
    assert record["prompt"] == "a red car" and record["seed"] == 0 and record["fusion_weight"] == 0.25
    assert record["settings"]["steps"] == 2 and record["settings"]["guidance"] == 5.0
    assert [f["path"] for f in record["retrieval"]["files"]] == ["/imgs/a.png", "/imgs/b.png"]
    assert set(record["timings"]) == {"batch_objects", "call_objects", "retrieve", "encode", "prior", "fusion",
                                      "main", "decode", "compile"}
    from PIL import Image
    grid = np.asarray(Image.open(car / "grid.png"))
    assert grid.shape == (8, 2 * 8 + 4 + 4 * 8, 3) and tuple(grid[4, 4]) == (255, 0, 0)
    lamp = json.loads((tmp_path / folders[2] / "record.json").read_text())
    assert lamp["retrieval"]["text_only"] and lamp["fusion_weight"] is None
    assert "no image" in lamp["retrieval"]["notice"]
    assert np.asarray(Image.open(tmp_path / folders[2] / "grid.png")).shape == (8, 32, 3)

    again = FakePipeline()
    assert _run(tmp_path, again, entries) == {"generated": 0, "skipped": 4, "text_only": 0}
    assert again.calls == []
    (tmp_path / folders[3] / "record.json").unlink()  # as if interrupted before the record was written
    resumed = FakePipeline()
    assert _run(tmp_path, resumed, entries)["generated"] == 1
    assert [r.prompt for r in resumed.calls[0]] == ["a lamp"] * 4
    with pytest.raises(generate.GenerateError, match="other settings.*steps"):
        _run(tmp_path, FakePipeline(), entries, settings=generate.Settings(steps=3))


def test_relevance_threshold_keeps_drops_falls_back_records_and_batches_by_k_prime(tmp_path):
    from mvrag_jax.retrieval.relevance import open_relevance
    from tests.retrieval.conftest import three_caption_index
    index = three_caption_index(tmp_path / "data")  # a red cube | a red sphere on a blue table | a blue sphere
    out = tmp_path / "out"
    entries = [generate.PromptEntry(0, "a red cube"), generate.PromptEntry(1, "a red dragon"),
               generate.PromptEntry(2, "a blue sphere")]
    settings = generate.Settings(batch=2, steps=2, relevance_threshold=0.5)

    def run(settings):
        pipeline = FakePipeline()
        relevance = None if settings.relevance_threshold is None else open_relevance(
            settings.relevance_threshold, index=index)
        retrieve = generate.make_retrieve(None, str(index), 4, False, relevance)
        counts = generate.generate_objects(pipeline, None, generate.plan_objects(entries, (0,)), out, retrieve,
                                           settings, call_size=2, show_progress=False, request_type=Request)
        return counts, pipeline

    counts, pipeline = run(settings)
    assert counts == {"generated": 3, "skipped": 0, "text_only": 1}
    # K' = 1, 0 and 2: each k its own (partial) batch, smallest k first, padded to the call size
    assert [[len(r.retrieved) for r in call] for call in pipeline.calls] == [[0, 0], [1, 1], [2, 2]]
    records = [json.loads((out / generate.object_name(e, 0) / "record.json").read_text()) for e in entries]
    assert all(r["settings"]["relevance_threshold"] == 0.5 and r["settings"]["relevance_clip"] is None
               for r in records)
    cube = records[0]["retrieval"]
    assert [f["caption"] for f in cube["files"]] == ["a red cube"] and not cube["text_only"]
    relevance = cube["relevance"]
    assert (relevance["measure"], relevance["threshold"], relevance["applied"], relevance["fell_back"]) == \
        ("bm25", 0.5, True, False)
    assert [(h["caption"], h["similarity"]) for h in relevance["kept"]] == [("a red cube", pytest.approx(1, 1e-6))]
    [dropped] = relevance["dropped"]
    assert dropped["path"].endswith("doc_1.png") and dropped["similarity"] == pytest.approx(0.28190259, rel=1e-6)
    dragon = records[1]
    assert dragon["retrieval"]["text_only"] and dragon["retrieval"]["files"] == [] and dragon["fusion_weight"] is None
    assert dragon["retrieval"]["relevance"]["fell_back"] and dragon["retrieval"]["relevance"]["kept"] == []
    assert [h["similarity"] for h in dragon["retrieval"]["relevance"]["dropped"]] == \
        pytest.approx([0.18435526, 0.16042453], rel=1e-6)  # tests/retrieval/test_relevance.py computes these
    assert "no retrieved image reached --relevance_threshold 0.5 (best bm25 similarity 0.1844)" in \
        dragon["retrieval"]["notice"]
    assert len(records[2]["retrieval"]["files"]) == 2  # "a blue sphere": 1.0 and 0.87 both pass

    # the threshold is a sampling setting: another threshold, or none, is refused on resume
    for other in (dataclasses.replace(settings, relevance_threshold=0.6), generate.Settings(batch=2, steps=2)):
        with pytest.raises(generate.GenerateError, match="other settings.*relevance_threshold"):
            run(other)
    assert run(settings)[0] == {"generated": 0, "skipped": 3, "text_only": 0}
    with pytest.raises(generate.GenerateError, match="prompt 1 .*no retrieved image reached.*--require_retrieval"):
        generate.make_retrieve(None, str(index), 4, True, open_relevance(0.5, index=index))(entries[1])
    folder = generate.make_retrieve(str(tmp_path / "data" / "three" / "images"), None, 4, False,
                                    open_relevance(0.5, index=index))(entries[1])
    assert len(folder.hits) == 3 and not folder.relevance["applied"] and folder.relevance["dropped"] == []
    assert [h["similarity"] for h in folder.relevance["kept"]] == [None] * 3  # folder images have no captions


BAD_INPUT = [
    (["--prompt", "  "], "the prompt is empty"),
    (["--prompt", "x", "--guidance", "0.5"], "--guidance 0.5"),
    (["--prompt", "x", "--steps", "0"], "--steps 0"),
    (["--prompt", "x", "--prior-steps", "0"], "--prior_steps 0"),
    (["--prompt", "x", "--dtype", "fp16"], "--dtype 'fp16'"),
    (["--prompt", "x", "--k", "0"], "--k 0"),
    (["--prompt", "x", "--ckpt", "somewhere"], "exactly one of --ckpt"),
    (["--prompt", "x", "--prompts", "f.txt"], "exactly one of --prompt"),
    (["--prompts", "missing.txt"], "missing.txt does not exist"),
    (["--prompt", "x", "--no-prior"], "--fusion_weight"),
    (["--prompt", "x", "--require-retrieval"], "has no retrieval source and --require_retrieval"),
    (["--prompt", "x", "--index", "i", "--relevance-threshold", "1.5"], "--relevance_threshold 1.5: the bm25"),
    (["--prompt", "x", "--relevance-threshold", "-1.5", "--relevance-clip", "c"], "-1.5: the clip prompt-caption"),
    (["--prompt", "x", "--retrieved", ".", "--relevance-threshold", "0.5"], "filters the hits of --index"),
    (["--prompt", "x", "--index", "i", "--relevance-clip", "c"], "--relevance_clip only scores hits"),
    (["--prompt", "x", "--index", "i", "--relevance-threshold", "0.5", "--relevance-clip", "nope"],
     "nope does not exist; pass a transformers CLIPModel folder"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["mvrag", "generate", "--release", str(TINY_RELEASE), "--out", "o", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_missing_model_folders_and_no_model(tmp_path, capsys):
    for flag in ("--ckpt", "--release"):
        assert main(["mvrag", "generate", flag, str(tmp_path / "nope"), "--prompt", "x", "--out", "o"]) == 2
        assert "does not exist" in capsys.readouterr().err
    assert main(["mvrag", "generate", "--prompt", "x", "--out", "o"]) == 2
    assert "exactly one of --ckpt" in capsys.readouterr().err


def test_retrieval_sources_fallback_and_require(tmp_path):
    from PIL import Image
    folder, empty = tmp_path / "imgs", tmp_path / "empty"
    folder.mkdir()
    empty.mkdir()
    for name, colour in (("b.png", "blue"), ("a.png", "red")):
        Image.new("RGB", (12, 9), colour).save(folder / name)
    retrieve = generate.make_retrieve(str(folder), None, 4, require=False)
    got = retrieve(generate.PromptEntry(0, "a car"))
    assert [h.path for h in got.hits] == [str(folder / "a.png"), str(folder / "b.png")] and got.notice is None
    assert got.source == f"folder:{folder}"
    own = retrieve(generate.PromptEntry(1, "a lamp", str(empty)))  # the prompt file's folder wins, and is empty
    assert own.hits == () and "holds no image file" in own.notice and own.source == f"folder:{empty}"
    none = generate.make_retrieve(None, None, 4, require=False)(generate.PromptEntry(0, "x"))
    assert none.hits == () and none.source is None and "no retrieval source" in none.notice
    with pytest.raises(generate.GenerateError, match="prompt 1 .*holds no image file.*--require_retrieval"):
        generate.make_retrieve(str(folder), None, 4, require=True)(generate.PromptEntry(1, "a lamp", str(empty)))
    with pytest.raises(generate.GenerateError, match="at most one of --retrieved"):
        generate.make_retrieve(str(folder), "idx", 4, require=False)
