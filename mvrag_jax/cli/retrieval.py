"""`mvrag index` and `mvrag retrieve`: retrieval indexes over captioned collections (mvrag_jax/retrieval/)."""


from absl import flags

from mvrag_jax.cli.flags import Command


def define_index(fv):
    flags.DEFINE_string("collection", None, 'Captioned collection: a .jsonl of {"image": path relative to the file\'s '
                        'folder, "caption": text} lines.', flag_values=fv)
    flags.DEFINE_string("out", None, "Index folder to write (atomically).", flag_values=fv)
    flags.DEFINE_enum("kind", "bm25", ["bm25", "dense"], "bm25: captions, the paper's Pyserini settings (k1=0.9, "
                      "b=0.4); dense: CLIP text -> image similarity.", flag_values=fv)
    flags.DEFINE_string("clip_model", None, "dense: a transformers CLIPModel folder (config.json, *.safetensors, "
                        "tokenizer files).", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.", flag_values=fv)
    flags.DEFINE_integer("num_shards", 1, "bm25: split the index into this many shards (queried together, with the "
                         "hits of one index).", flag_values=fv)
    flags.DEFINE_integer("shard_index", None, "bm25 with --num_shards N: build only shard i (host i of a job), an "
                         "ordinary index at --out; join the N with --join.", flag_values=fv)
    flags.DEFINE_list("join", None, "Instead of --collection: BM25 index folders (e.g. the shards of a job) to join "
                      "into one sharded index at --out (nothing is copied).", flag_values=fv)
    flags.mark_flags_as_required(["out"], flag_values=fv)


def run_index(fv, argv):
    from mvrag_jax.retrieval import RetrievalError, build_index
    if (fv.collection is None) == (fv.join is None):
        raise RetrievalError("pass --collection FILE.jsonl to build an index, or --join DIR,DIR to join BM25 shards")
    if fv.join is not None:
        from mvrag_jax.retrieval.index import join_shards
        print(f"wrote {join_shards(fv.join, fv.out, overwrite=fv.overwrite)}")
        return 0
    out = build_index(fv.collection, fv.out, kind=fv.kind, clip_model=fv.clip_model, overwrite=fv.overwrite,
                      num_shards=fv.num_shards, shard_index=fv.shard_index)
    print(f"wrote {out}")
    return 0


def define_retrieve(fv):
    flags.DEFINE_string("index", None, "Index folder from `mvrag index` (or use --folder).", flag_values=fv)
    flags.DEFINE_string("folder", None, "A folder of images, returned in name order (the official simple retriever).",
                        flag_values=fv)
    flags.DEFINE_string("prompt", None, "Text prompt.", flag_values=fv)
    flags.DEFINE_integer("k", 4, "Images to retrieve (the paper uses 4).", flag_values=fv)
    flags.DEFINE_string("out", None, "Copy the hits here as 00_<name>, 01_<name>, ... (a new or empty folder).",
                        flag_values=fv)
    flags.DEFINE_string("clip_model", None, "dense index: use this CLIPModel folder instead of the one it was built "
                        "with.", flag_values=fv)
    flags.mark_flags_as_required(["prompt"], flag_values=fv)


def run_retrieve(fv, argv):
    from mvrag_jax.retrieval import show_hits
    print(show_hits(fv.prompt, fv.k, folder=fv.folder, index=fv.index, clip_model=fv.clip_model, out=fv.out))
    return 0


COMMANDS = (
    Command("index", "Build a BM25 or dense (CLIP) retrieval index from a captioned image collection.", define_index,
            run_index),
    Command("retrieve", "Retrieve k images for a prompt from an index or a folder; list them, optionally copy them.",
            define_retrieve, run_retrieve),
)
