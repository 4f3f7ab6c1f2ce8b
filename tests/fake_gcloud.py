"""A stand-in for the `gcloud` CLI, just enough of it for launch/tpu_train.sh: one TPU VM with N workers whose
state lives in a JSON file, so the launcher's supervise loop runs offline against scripted preemptions.

    FAKE_GCLOUD_STATE=state.json gcloud compute tpus tpu-vm describe NAME ... --format 'value(state)'

state.json: {"vm": null | "READY" | "PREEMPTED" | ..., "trainers": ["none" | "running" | "preempted" | "done" |
"failed", ...], "events": {"3": "preempt_vm", ...}, "polls": 0}. Each `describe` counts a poll and first applies
that poll's event: `preempt_vm` (the VM is preempted; its trainers die), `worker1_gone` (worker 1's trainer dies),
`finish` (running trainers reach train.steps), `fail` (running trainers exit 1). Every call is appended to
`calls` as its argv, so a test reads back the whole sequence.
"""

import json
import os
import sys

SUMMARY = {"preempted": '{"step": 3, "preempted": true}', "done": '{"step": 5, "preempted": false}'}


def main(argv: list[str]) -> int:
    path = os.environ["FAKE_GCLOUD_STATE"]
    with open(path) as f:
        state = json.load(f)
    state["calls"].append(argv)
    code = _handle(state, argv)
    with open(path, "w") as f:
        json.dump(state, f)
    return code


def _handle(state: dict, argv: list[str]) -> int:
    verb = argv[3] if len(argv) > 3 else ""  # gcloud compute tpus tpu-vm VERB NAME ...
    trainers = state["trainers"]
    if verb == "describe":
        state["polls"] += 1
        event = state["events"].get(str(state["polls"]))
        if event == "preempt_vm":
            state["vm"], state["trainers"] = "PREEMPTED", ["none"] * len(trainers)
        elif event == "worker1_gone":
            trainers[1] = "none"
        elif event in ("finish", "fail"):
            state["trainers"] = [("done" if event == "finish" else "failed") if t == "running" else t
                                 for t in trainers]
        if state["vm"] is None:
            print("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND", file=sys.stderr)
            return 1
        print(state["vm"])
    elif verb == "create":
        state["vm"], state["trainers"] = "READY", ["none"] * len(trainers)
    elif verb == "delete":
        if state["vm"] is None:
            return 1
        state["vm"] = None
    elif verb == "ssh":
        command = argv[argv.index("--command") + 1]
        if state["vm"] != "READY":
            return 255
        if "mvrag-status" in command:
            for t in trainers:
                print({"running": "mvrag-status running", "none": "mvrag-status gone",
                       "failed": "mvrag-status exited 1 "}.get(t) or f"mvrag-status exited 0 {SUMMARY[t]}")
        elif "setsid" in command:
            state["trainers"] = ["running"] * len(trainers)
        elif "kill -TERM" in command:
            state["trainers"] = ["preempted" if t == "running" else t for t in trainers]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
