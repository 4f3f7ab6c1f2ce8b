"""tools/preemption_budget.py: the bytes a forced save writes per host, from shapes alone, and a timed real write."""

import json
import subprocess
import sys

from tests.train.conftest import REPO, subprocess_env


def test_bytes_per_host_add_up_and_the_write_is_timed_and_removed(tmp_path):
    proc = subprocess.run([sys.executable, "tools/preemption_budget.py", "--size", "micro", "--mesh", "data=1,fsdp=2",
                           "--hosts", "1,2", "--write", str(tmp_path), "--json"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    groups, total = report["groups"], report["total_bytes"]
    assert total == sum(groups.values()) and groups["trainable"] > 0 and groups["frozen"] > 0
    assert groups["opt_state"] >= 2 * groups["trainable"]  # AdamW: two moments per trained weight (plus counts)
    assert report["per_host"]["1"] == total  # one host writes every distinct shard
    # two hosts split the fsdp-sharded arrays; a replicated array is written once, by the host of its first replica
    assert total / 2 <= report["per_host"]["2"] < total
    assert report["write"]["bytes"] == total and report["write"]["seconds"] > 0
    assert list(tmp_path.iterdir()) == []  # the timed file is removed
