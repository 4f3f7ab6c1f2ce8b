"""mvrag_jax/train/workdir.py and the workdir writers of train/ (checkpoints, metrics, samples, loss PNG, data
position check, export) against gs:// workdirs, offline: gs:// goes to tests/train/fake_gcs.py (flat objects, no
appends, uploads visible only on close), for epath through fsspec and for orbax's arrays through tensorstore's GCS
driver pointed at the fake's JSON API. The one thing answered without GCS is orbax's bucket metadata query
(hierarchical namespace or not, via google-cloud-storage): a flat bucket, like the default GCS bucket."""

import io
import os
import pathlib
import re
import types

import numpy as np
import pytest
from PIL import Image

from mvrag_jax.train import checkpoint, loop, metrics, workdir
from tests.train import fake_gcs
from tests.train.conftest import REPO

RUN = "gs://bucket/runs/r1"


@pytest.fixture
def gcs(monkeypatch, tmp_path):
    """gs:// on the fake; the cwd is an empty folder, so a URI mistaken for a local path shows up as tmp/gs:/..."""
    monkeypatch.chdir(tmp_path)
    fake = fake_gcs.install()
    yield fake
    fake_gcs.uninstall()
    assert not (tmp_path / "gs:").exists(), "a gs:// path was written to local disk"


@pytest.fixture
def gcs_api(gcs, monkeypatch):
    """`gcs` plus the JSON API for tensorstore (orbax's arrays) over the same objects."""
    from orbax.checkpoint._src.path import gcs_utils
    server = fake_gcs.serve()
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(gcs_utils, "get_bucket",
                        lambda name: types.SimpleNamespace(name=name, hierarchical_namespace_enabled=False))
    yield gcs
    server.shutdown()


def _object(fake, uri: str) -> bytes:
    return fake.objects[uri.removeprefix("gs://")][0]


def test_workdir_paths_keep_uris_and_make_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert str(workdir.as_path(RUN)) == RUN and workdir.is_remote(workdir.as_path(RUN))
    assert str(checkpoint.checkpoint_dir(RUN)) == f"{RUN}/checkpoints"
    assert str(workdir.as_path("~/run")) == str(tmp_path / "home" / "run") and not workdir.is_remote("~/run")
    monkeypatch.chdir(tmp_path)
    assert str(checkpoint.checkpoint_dir("rel")) == str(tmp_path / "rel" / "checkpoints")
    # datasets: WORKDIR/data locally; for a bucket, a local folder on each host
    assert loop.default_data_dir(tmp_path / "run") == str(tmp_path / "run" / "data")
    assert loop.default_data_dir(RUN) == str(tmp_path / "home/.cache/mvrag_jax/data/gs/bucket/runs/r1")
    from configs import train
    assert loop.resolve_config(train.get_config("size=micro"), RUN).data.data_dir == loop.default_data_dir(RUN)


def test_the_fake_bucket_refuses_what_gcs_refuses(gcs):
    from etils import epath
    path = epath.Path(RUN) / "log.txt"
    path.write_text("a\n")
    with pytest.raises(NotImplementedError, match="no appends"):
        path.open("a")
    (epath.Path(RUN) / "empty").mkdir(parents=True)
    assert not (epath.Path(RUN) / "empty").exists()  # no objects under it: no folder


def test_write_atomic_local_and_in_a_bucket(gcs, tmp_path):
    local = workdir.as_path(tmp_path / "a" / "b.bin")
    workdir.write_atomic(local, b"one")
    workdir.write_atomic(local, b"two")
    assert local.read_bytes() == b"two" and os.listdir(tmp_path / "a") == ["b.bin"]  # no temporary left behind
    workdir.write_atomic(workdir.as_path(RUN) / "x" / "b.bin", b"three")
    assert _object(gcs, f"{RUN}/x/b.bin") == b"three" and gcs.uploads == ["bucket/runs/r1/x/b.bin"]


def _events(fake) -> list[str]:
    return sorted(key for key in fake.objects if key.startswith("bucket/runs/r1/tb/events.out.tfevents."))


def test_metrics_in_a_bucket_go_up_as_new_parts_and_resume(gcs):
    with metrics.MetricWriter(RUN, sync_every_s=3600) as writer:
        writer.write([{"step": 1, "loss": 0.5, "loss_3d": 0.5}, {"step": 2, "loss": 0.4, "loss_2d": 0.4}])
        assert not gcs.objects  # held back until a sync
        staging = writer._staging
        writer.sync()
        assert metrics.read_metrics(RUN) == [{"step": 1, "loss": 0.5, "loss_3d": 0.5},
                                             {"step": 2, "loss": 0.4, "loss_2d": 0.4}]
        assert sorted(k for k in gcs.objects if "/metrics/" in k) == ["bucket/runs/r1/metrics/00000-000000.jsonl"]
        events = _events(gcs)
        assert len(events) == 1 and b"train/loss_3d" in gcs.objects[events[0]][0]
        uploads = len(gcs.uploads)
        writer.sync()
        assert len(gcs.uploads) == uploads  # nothing new: nothing uploaded
        writer.write([{"step": 3, "loss": 0.35}])
        writer.sync()
        assert gcs.uploads[uploads:] == ["bucket/runs/r1/metrics/00000-000001.jsonl", *_events(gcs)[1:]]
        assert _object(gcs, f"{RUN}/metrics/00000-000001.jsonl") == b'{"step": 3, "loss": 0.35}\n'  # only the new
        assert gcs.objects[events[0]] == gcs.objects[_events(gcs)[0]]  # the first event file was not uploaded again
    assert not staging.exists()

    with metrics.MetricWriter(RUN, sync_every_s=0) as writer:  # a resumed run; syncs on every write
        writer.write([{"step": 3, "loss": 0.3, "loss_2d": 0.3}, {"step": 4, "loss": 0.2, "loss_3d": 0.2}])
        assert [r["step"] for r in metrics.read_metrics(RUN)] == [1, 2, 3, 4]
    assert [(r["step"], r["loss"]) for r in metrics.read_metrics(RUN)] == [(1, 0.5), (2, 0.4), (3, 0.3), (4, 0.2)]
    assert sorted(k for k in gcs.objects if "/metrics/" in k) == [  # run 1 went on after run 0's parts
        f"bucket/runs/r1/metrics/{name}.jsonl" for name in ("00000-000000", "00000-000001", "00001-000000")]
    assert len(_events(gcs)) == 3  # one event file per sync that had events
    assert not any(k.endswith("metrics.jsonl") for k in gcs.objects)

    png = metrics.plot_loss(RUN)
    assert str(png) == f"{RUN}/loss.png"
    with Image.open(io.BytesIO(_object(gcs, str(png)))) as image:
        assert image.format == "PNG" and image.size == (700, 400)


def test_a_bucket_workdir_of_an_older_version_keeps_its_metrics_jsonl(gcs):
    from etils import epath
    (epath.Path(RUN) / "metrics.jsonl").write_text('{"step": 1, "loss": 0.9}\n{"step": 2, "loss": 0.8}\n')
    with metrics.MetricWriter(RUN) as writer:
        writer.write([{"step": 2, "loss": 0.7}, {"step": 3, "loss": 0.6}])
    assert [(r["step"], r["loss"]) for r in metrics.read_metrics(RUN)] == [(1, 0.9), (2, 0.7), (3, 0.6)]


def test_each_sync_uploads_only_what_is_new_over_a_long_run(gcs):
    """A simulated long run: 2,000 steps, a record per step, a sync every 20 steps. Whole-file re-uploads (the
    previous design) would send the sum of the growing files: quadratic in the run's length."""
    syncs, steps_per_sync = 100, 20
    per_sync, log, events = [], 0, 0
    with metrics.MetricWriter(RUN, sync_every_s=3600) as writer:
        for sync in range(syncs):
            before = sum(gcs.upload_sizes)
            for step in range(sync * steps_per_sync + 1, (sync + 1) * steps_per_sync + 1):
                writer.write([{"step": step, "loss": 1.0 / step, "grad_norm": 0.5, "steps_per_s": 3.0}])
            assert writer.sync() == sum(gcs.upload_sizes) - before  # what sync reports is what went up
            per_sync.append(sum(gcs.upload_sizes) - before)
    records = sum(len(v[0]) for k, v in gcs.objects.items() if "/metrics/" in k)
    tb = sum(len(v[0]) for k, v in gcs.objects.items() if "/tb/" in k)
    assert sum(gcs.upload_sizes) == records + tb  # every byte went up exactly once: no object was replaced
    assert len(metrics.read_metrics(RUN)) == syncs * steps_per_sync
    # Bytes per sync stay flat (a record's JSON grows by a digit or so), instead of growing with the step.
    assert max(per_sync) < 1.2 * min(per_sync), per_sync
    whole_files = sum(records * (i + 1) / syncs for i in range(syncs))  # re-uploading metrics.jsonl whole
    assert whole_files > 40 * records
    print(f"\n{syncs} syncs of {steps_per_sync} steps: {min(per_sync)}-{max(per_sync)} bytes per sync, "
          f"{sum(per_sync)} in all ({records} of records, {tb} of TensorBoard events); whole-file re-uploads of "
          f"metrics.jsonl alone: {whole_files:.0f}")


def test_samples_in_a_bucket(gcs):
    grid = np.zeros((8, 16, 3), np.uint8)
    grid[:, 8:] = 255
    with metrics.MetricWriter(RUN) as writer:
        loop.write_samples({"grid": grid}, RUN, 12, writer)
    with Image.open(io.BytesIO(_object(gcs, f"{RUN}/samples/grid_00000012.png"))) as image:
        np.testing.assert_array_equal(np.asarray(image), grid)
    tb = [obj[0] for key, obj in gcs.objects.items() if "/tb/events." in key]
    assert len(tb) == 1 and b"samples/grid" in tb[0]


def test_resume_checks_loader_positions_in_a_bucket(gcs):
    from etils import epath
    (epath.Path(RUN) / "checkpoints/4/data_iter/process_0-of-2.json").write_text("{}")
    (epath.Path(RUN) / "checkpoints/4/data_iter/process_1-of-2.json").write_text("{}")
    with pytest.raises(loop.TrainConfigError, match=r"step 4 holds loader positions \['process_0-of-2.json', "
                                                     r"'process_1-of-2.json'\], none for process 0 of 1"):
        loop._check_data_position(workdir.as_path(RUN), 4, 1)
    loop._check_data_position(workdir.as_path(RUN), 4, 2)  # the process count that wrote it: fine
    assert checkpoint.is_workdir(RUN) and not checkpoint.is_workdir("gs://bucket/runs/other")


def test_export_from_a_bucket_path_that_is_not_a_workdir_names_the_fix(gcs, tmp_path):
    with pytest.raises(checkpoint.NoCheckpointError, match=r"gs://bucket/ckpt holds no checkpoints/ folder: a --ckpt "
                                                           r"in a bucket must be a `mvrag train` --workdir"):
        checkpoint.export("gs://bucket/ckpt", tmp_path / "out")
    assert not pathlib.Path(tmp_path / "out").exists()


def test_orbax_checkpoints_in_a_bucket_restore_and_skip_uncommitted_steps(gcs_api):
    import grain
    import jax
    import jax.numpy as jnp
    from configs import train
    cfg = train.get_config("size=micro")
    state = {"w": jnp.arange(12.0).reshape(3, 4), "step": jnp.int32(7)}
    data_iter = iter(grain.MapDataset.range(10).to_iter_dataset())
    [next(data_iter) for _ in range(3)]
    manager = checkpoint.open_manager(RUN, save_every=1)
    assert checkpoint.latest_step(manager) is None
    checkpoint.save(manager, 1, state, data_iter, cfg)
    next(data_iter)
    checkpoint.save(manager, 2, {"w": state["w"] + 1, "step": jnp.int32(8)}, data_iter, cfg)
    manager.wait_until_finished()
    manager.close()
    keys = sorted(gcs_api.objects)
    assert any(re.fullmatch(r"bucket/runs/r1/checkpoints/1/state/ocdbt\.process_0/d/\w+", k) for k in keys), keys
    assert "bucket/runs/r1/checkpoints/1/data_iter/process_0-of-1.json" in keys
    assert "bucket/runs/r1/checkpoints/2/commit_success.txt" in keys  # on GCS a step is committed by this file
    assert checkpoint.is_workdir(RUN)

    del gcs_api.objects["bucket/runs/r1/checkpoints/2/commit_success.txt"]  # as if killed before its last write
    manager = checkpoint.open_manager(RUN, save_every=1)
    assert checkpoint.latest_step(manager) == 1
    fresh = iter(grain.MapDataset.range(10).to_iter_dataset())
    restored, config = checkpoint.restore(manager, 1, jax.eval_shape(lambda: state), fresh)
    manager.close()
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert int(restored["step"]) == 7 and next(fresh) == 3 and config["train"]["steps"] == cfg.train.steps
    step, plain = checkpoint.restore_state(RUN)  # what `mvrag export --ckpt gs://...` reads
    assert step == 1 and np.asarray(plain["w"]).sum() == 66.0


def test_tpu_requirements_pin_what_bucket_workdirs_need():
    tpu = (REPO / "requirements-tpu.txt").read_text().splitlines()
    for package in ("gcsfs", "google-cloud-storage"):  # epath's gs:// backend; orbax's bucket metadata query
        assert any(re.fullmatch(rf"{package}==[\d.]+", line) for line in tpu), package
        assert not any(line.startswith(package) for line in (REPO / "requirements.txt").read_text().splitlines())


@pytest.mark.slow  # two compiles of the micro step: ~3 min on a busy 2-core machine
def test_a_training_run_in_a_bucket_then_resume(gcs_api, train_data_dir, tmp_path):
    from configs import train
    cfg = train.get_config("size=micro")
    cfg.train.update(batch_size=2, steps=2, ckpt_every=1, log_every=1, keep_checkpoints=2)
    cfg.data.update(batch_size=2, data_dir=str(train_data_dir))
    first = loop.run(cfg, RUN)
    assert first["step"] == 2 and first["workdir"] == RUN and first["loss_png"] == f"{RUN}/loss.png"
    cfg.train.steps = 3
    resumed = loop.run(cfg, RUN)
    assert resumed["start_step"] == 2 and resumed["step"] == 3
    assert [r["step"] for r in metrics.read_metrics(RUN)] == [1, 2, 3]
    keys = set(gcs_api.objects)
    assert {f"bucket/runs/r1/checkpoints/{s}/commit_success.txt" for s in (2, 3)} <= keys
    assert not any(k.startswith("bucket/runs/r1/checkpoints/1/") for k in keys)  # train.keep_checkpoints=2
    # Process 0 writes the records and events: one part per sync with new records, none rewritten.
    parts = sorted(k for k in keys if k.startswith("bucket/runs/r1/metrics/"))
    assert parts and all(gcs_api.uploads.count(k) == 1 for k in parts)
    assert {k.split("/")[-1].split("-")[0] for k in parts} == {"00000", "00001"}  # the first run's, the resumed one's
    events = [k for k in keys if "/tb/events.out.tfevents." in k]
    assert len(events) >= 2 and all(gcs_api.uploads.count(k) == 1 for k in events)


def test_another_process_reaches_the_same_fake_bucket_over_http(gcs_api):
    """The multi-process tests' plumbing: a process's gs:// through fake_gcs.install_http lands in this process's
    fake bucket, with its writer tag."""
    from tests.train.conftest import run_python
    url = os.environ["TENSORSTORE_GCS_HTTP_URL"]
    (workdir.as_path(RUN) / "seen.txt").write_text("0")  # written here, listed there
    proc = run_python(f"""
from etils import epath
from tests.train import fake_gcs
fake_gcs.install_http({url!r}, "process-1")
root = epath.Path("{RUN}")
(root / "a" / "b.txt").write_text("hello")
assert (root / "a" / "b.txt").read_text() == "hello" and (root / "a").is_dir() and not (root / "nope").exists()
assert sorted(p.name for p in root.iterdir()) == ["a", "seen.txt"], list(root.iterdir())
(root / "a" / "b.txt").unlink()
(root / "c.txt").write_bytes(b"x")
""", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bucket/runs/r1/a/b.txt" not in gcs_api.objects and _object(gcs_api, f"{RUN}/c.txt") == b"x"
    assert ("bucket/runs/r1/c.txt", "process-1") in gcs_api.writers


# A `mvrag train` process whose gs:// is the test's fake bucket (over its JSON API), tagging its uploads.
_TRAIN_IN_FAKE_BUCKET = """
import os, sys, types
from tests.train import fake_gcs
fake_gcs.install_http(os.environ["TENSORSTORE_GCS_HTTP_URL"], os.environ["FAKE_GCS_WRITER"])
from orbax.checkpoint._src.path import gcs_utils
gcs_utils.get_bucket = lambda name: types.SimpleNamespace(name=name, hierarchical_namespace_enabled=False)
from mvrag_jax.cli import main
sys.exit(main(["mvrag", *sys.argv[1:]]))
"""


@pytest.mark.slow  # two training processes (the step compile is test_distributed's, from the session's cache)
def test_two_processes_in_a_bucket_write_what_the_readme_says(gcs_api, train_data_dir, compile_cache):
    import json
    import subprocess
    import sys
    from tests.conftest import free_port
    from tests.train.conftest import subprocess_env, train_argv
    address = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen(
        [sys.executable, "-c", _TRAIN_IN_FAKE_BUCKET, *train_argv(RUN, train_data_dir, compile_cache,
                                                                "--config.train.steps=2", "--config.train.ckpt_every=1",
                                                                "--config.data.batch_size=1",
                                                                # as tests/train/test_distributed.py: its compile
                                                                "--config.train.optimizer.learning_rate=1e-3",
                                                                f"--coordinator={address}",
                                                                "--num_processes=2", f"--process_id={i}",
                                                                "--init_timeout=120")[3:]],
        cwd=REPO, env=subprocess_env(FAKE_GCS_WRITER=f"process-{i}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]
    outputs = [p.communicate(timeout=1500) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    assert [json.loads(out.strip().splitlines()[-1])["step"] for out, _ in outputs] == [2, 2]

    wrote = {}  # writer -> keys (relative to the run) it uploaded through epath; "" = tensorstore (orbax's arrays)
    for key, writer in gcs_api.writers:
        wrote.setdefault(writer, set()).add(key.removeprefix("bucket/runs/r1/"))
    print("\n" + "\n".join(f"{w or 'tensorstore'}: {sorted(keys)}" for w, keys in sorted(wrote.items())))
    main_only = [k for k in gcs_api.objects if re.match(r"bucket/runs/r1/(metrics/|tb/|loss\.png)", k)]
    assert main_only and all(k.removeprefix("bucket/runs/r1/") in wrote["process-0"] for k in main_only)
    assert not any(re.match(r"(metrics/|tb/|loss\.png|samples/)", k) for k in wrote["process-1"])
    # every process writes its own loader position; nothing of process 1 lies outside checkpoints/
    assert {"checkpoints/2/data_iter/process_1-of-2.json"} <= wrote["process-1"]
    assert all(k.startswith("checkpoints/") for k in wrote["process-1"]), wrote["process-1"]
    assert "checkpoints/2/data_iter/process_0-of-2.json" in wrote["process-0"]
    assert "checkpoints/2/commit_success.txt" in wrote["process-0"]  # the primary host commits the step
    arrays = [k for k in gcs_api.objects if "/checkpoints/2/state/ocdbt.process_" in k]
    assert {re.search(r"ocdbt\.process_(\d)", k)[1] for k in arrays} == {"0", "1"}  # both write array shards
    step, state = checkpoint.restore_state(RUN)  # this one process restores what two wrote in the bucket
    assert step == 2 and int(state["step"]) == 2
