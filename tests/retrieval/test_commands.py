"""`mvrag index` and `mvrag retrieve` through mvrag_jax.cli.main: listings, copies in rank order, one-line errors."""

import pytest

from mvrag_jax.cli import main

NO_CACHE = ["--compile_cache_dir", "none"]


def test_index_then_retrieve_bm25_with_copies(collection, tmp_path, capsys):
    idx, out = tmp_path / "idx", tmp_path / "hits"
    assert main(["mvrag", "index", "--collection", str(collection), "--out", str(idx)] + NO_CACHE) == 0
    assert f"wrote {idx}" in capsys.readouterr().out
    assert main(["mvrag", "retrieve", "--index", str(idx), "--prompt", "Red sphere", "--k", "2", "--out", str(out)]
                + NO_CACHE) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "rank\tscore\tpath\tcaption"
    assert lines[1].startswith("0\t") and lines[1].endswith("img_3.png\ta red sphere")
    assert lines[2].endswith("img_0.png\ta red cube") and "copied 2 images" in lines[3]
    assert sorted(p.name for p in out.iterdir()) == ["00_img_3.png", "01_img_0.png"]
    assert (out / "00_img_3.png").read_bytes() == (collection.parent / "images" / "img_3.png").read_bytes()
    assert main(["mvrag", "retrieve", "--index", str(idx), "--prompt", "red", "--out", str(out)] + NO_CACHE) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_retrieve_from_a_folder(collection, capsys):
    assert main(["mvrag", "retrieve", "--folder", str(collection.parent / "images"), "--prompt", "x", "--k", "2"]
                + NO_CACHE) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1] for line in lines[1:]] == ["-", "-"] and lines[1].endswith("img_0.png\t")


def test_dense_index_from_the_cli(collection, tiny_clip, tmp_path, capsys):
    idx = tmp_path / "dense"
    assert main(["mvrag", "index", "--collection", str(collection), "--out", str(idx), "--kind", "dense",
                 "--clip_model", str(tiny_clip)] + NO_CACHE) == 0
    capsys.readouterr()
    assert main(["mvrag", "retrieve", "--index", str(idx), "--prompt", "a red cube", "--k", "6"] + NO_CACHE) == 0
    scores = [float(line.split("\t")[1]) for line in capsys.readouterr().out.splitlines()[1:]]
    assert len(scores) == 6 and scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)


@pytest.mark.parametrize("setup, args, message", [
    (None, ["index", "--collection", "{tmp}/nope.jsonl", "--out", "{tmp}/i"], "does not exist"),
    ("{bad", ["index", "--collection", "{tmp}/c.jsonl", "--out", "{tmp}/i"], "c.jsonl:1: not valid JSON"),
    ("\n", ["index", "--collection", "{tmp}/c.jsonl", "--out", "{tmp}/i"], "has no records"),
    ('{"image": "../x.png", "caption": "x"}', ["index", "--collection", "{tmp}/c.jsonl", "--out", "{tmp}/i"],
     "leaves the collection root"),
    (None, ["retrieve", "--folder", "{tmp}", "--prompt", "x", "--k", "0"], "holds no image"),
    ("png", ["retrieve", "--folder", "{tmp}", "--prompt", "x", "--k", "0"], "positive integer"),
    (None, ["retrieve", "--prompt", "x"], "exactly one of --folder"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, capsys, setup, args, message):
    if setup == "png":
        from PIL import Image
        Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    elif setup is not None:
        (tmp_path / "c.jsonl").write_text(setup)
    argv = ["mvrag"] + [a.format(tmp=tmp_path) for a in args] + NO_CACHE
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith(f"mvrag {args[0]}: error:")
    assert not (tmp_path / "i").exists()


def test_index_shards_on_two_hosts_then_join(collection, tmp_path, capsys):
    shards = [str(tmp_path / f"shard_{i}") for i in range(2)]
    for i, shard in enumerate(shards):
        assert main(["mvrag", "index", "--collection", str(collection), "--out", shard, "--num_shards", "2",
                     "--shard_index", str(i)] + NO_CACHE) == 0
    assert main(["mvrag", "index", "--join", ",".join(shards), "--out", str(tmp_path / "all")] + NO_CACHE) == 0
    capsys.readouterr()
    assert main(["mvrag", "retrieve", "--index", str(tmp_path / "all"), "--prompt", "red sphere", "--k", "3"]
                + NO_CACHE) == 0
    names = [line.split("\t")[2].rsplit("/", 1)[1] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names == ["img_3.png", "img_0.png", "img_1.png"]  # test_bm25's one-index ranking, ties included
    assert main(["mvrag", "index", "--out", str(tmp_path / "x")] + NO_CACHE) == 2
    assert "pass --collection FILE.jsonl to build an index, or --join" in capsys.readouterr().err
