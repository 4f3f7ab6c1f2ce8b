"""The workdir lock (train/lock.py), the resume config comparison (train/resume.py) and metrics.jsonl after a
resume (each step once), without training."""

import json
import os
import time

import pytest

from configs import train
from mvrag_jax.train import lock, metrics, resume


def _foreign_lock(path, *, age_s: float, host: str = "other-host", pid: int = 1234):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"token": "theirs", "owner": f"pid {pid} on {host}", "host": host, "pid": pid,
                                "processes": 4, "heartbeat": time.time() - age_s}))


def test_a_second_trainer_is_refused_and_the_first_releases(tmp_path):
    first = lock.WorkdirLock(tmp_path, heartbeat_s=0.05)
    first.acquire()
    try:
        held = json.loads((tmp_path / lock.LOCK_FILE).read_text())
        assert held["pid"] == os.getpid() and held["token"] == first.record["token"]
        before = held["heartbeat"]
        time.sleep(0.3)
        assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["heartbeat"] > before  # it beats
        with pytest.raises(lock.WorkdirLockedError, match=rf"{tmp_path} is in use by another trainer \(pid "
                                                          rf"{os.getpid()} on .*last heartbeat 0 s ago\)"):
            lock.WorkdirLock(tmp_path).acquire()
    finally:
        first.release()
    assert not (tmp_path / lock.LOCK_FILE).exists()
    second = lock.WorkdirLock(tmp_path)
    second.acquire()
    second.release()


def test_a_fresh_foreign_lock_refuses_a_stale_one_is_taken_over(tmp_path):
    path = tmp_path / lock.LOCK_FILE
    _foreign_lock(path, age_s=30)
    with pytest.raises(lock.WorkdirLockedError, match=r"pid 1234 on other-host, 4 process\(es\), last heartbeat "
                                                      r"30 s ago\); stop it or pass another --workdir.*older than "
                                                      r"600 s \(train.lock_stale_after_s\)"):
        lock.WorkdirLock(tmp_path, stale_after_s=600).acquire()
    assert json.loads(path.read_text())["token"] == "theirs"  # untouched
    _foreign_lock(path, age_s=601)
    taker = lock.WorkdirLock(tmp_path, stale_after_s=600)
    taker.acquire()
    assert json.loads(path.read_text())["token"] == taker.record["token"]
    taker.release()


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    import socket
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _foreign_lock(tmp_path / lock.LOCK_FILE, age_s=1, host=socket.gethostname(), pid=int(dead.stdout))
    taker = lock.WorkdirLock(tmp_path)
    taker.acquire()  # at once: the pid on this host is gone, though the heartbeat is 1 s old
    held = json.loads((tmp_path / lock.LOCK_FILE).read_text())
    assert held["pid"] == os.getpid() and held["token"] != "theirs"
    taker.release()
    assert not (tmp_path / lock.LOCK_FILE).exists()


def _cfg():
    return train.get_config("size=micro")


def test_resume_config_changes_by_kind():
    saved = json.loads(_cfg().to_json())
    new = _cfg()
    new.train.steps, new.mesh.data, new.train.log_every = 999, 2, 7  # how the run is driven: free
    assert [c[3] for c in resume.compare_configs(saved, new)] == ["free"] * 3
    resume.check_resume(resume.compare_configs(saved, new), allow=False, step=4, workdir="w")

    new.train.seed, new.data.seed = 5, 9
    with pytest.raises(resume.ConfigChangedError, match=r"resuming w at step 4 with another config \(data.seed: 0 "
                                                        r"-> 9; train.seed: 0 -> 5\).*--allow-config-change"):
        resume.check_resume(resume.compare_configs(saved, new), allow=False, step=4, workdir="w")
    resume.check_resume(resume.compare_configs(saved, new), allow=True, step=4, workdir="w")

    new.model.unet.model_channels = 64
    new.train.trainable = "ip"
    with pytest.raises(resume.ConfigChangedError, match=r"cannot resume w at step 4: the model or what trains "
                                                        r"changed \(model.unet.model_channels: \d+ -> 64; "
                                                        r"train.trainable: 'unet' -> 'ip'\)"):
        resume.check_resume(resume.compare_configs(saved, new), allow=True, step=4, workdir="w")


def test_fields_one_side_lacks_are_no_change():
    saved = json.loads(_cfg().to_json())
    del saved["train"]["lock_stale_after_s"]  # a config saved before the field existed
    assert resume.compare_configs(saved, _cfg()) == []


def test_records_after_the_resumed_checkpoint_are_dropped(tmp_path):
    with metrics.MetricWriter(tmp_path) as writer:
        writer.write([{"step": s, "loss": 1.0 / s} for s in range(1, 6)])
    assert metrics.drop_records_after(tmp_path, 3) == 2
    lines = (tmp_path / metrics.METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert metrics.drop_records_after(tmp_path, 3) == 0
