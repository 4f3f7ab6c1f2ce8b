"""How long the forced save at a preemption takes: the bytes of the full-size train state each host writes, from the
param shapes alone (the trainer's abstract state via jax.eval_shape: nothing is allocated), and the time this
machine's disk takes to write and fsync a real file of that size.

    python tools/preemption_budget.py --size paper --mesh data=1,fsdp=8 --hosts 1,2 --write /tmp/budget

Per host: orbax writes each distinct shard of each array once, from the process holding its first replica, so a
host's share is the shards whose first device is one of its own (devices are assigned to hosts in id order, as on a
TPU slice). Cloud TPU gives spot VMs 30 s between the preemption notice (SIGTERM) and the stop; the trainer then
finishes its step, copies the state to host memory and writes it (train/loop.py).
"""

import argparse
import json
import os
import sys
import time


def state_bytes(size: str, mesh: str, hosts: list[int], devices: int) -> dict:
    """{"groups": {field: bytes}, "total_bytes", "per_host": {hosts: max bytes one host writes}}."""
    import jax
    import numpy as np
    from configs import train
    from mvrag_jax.train.trainer import make_mesh, make_trainer
    cfg = train.get_config(f"size={size}")
    cfg.train.init = "random"  # the shapes only: where weights come from does not change them
    for axis, count in (pair.split("=") for pair in mesh.split(",")):
        cfg.mesh[axis] = int(count)
    state = make_trainer(cfg, make_mesh(cfg)).abstract_state
    groups = {name: 0 for name in ("trainable", "frozen", "opt_state", "ema", "step", "skipped_steps")}
    per_host = {h: np.zeros(h, np.int64) for h in hosts}
    for name in groups:
        for leaf in jax.tree.leaves(getattr(state, name)):
            nbytes = int(np.prod(leaf.shape, dtype=np.int64)) * leaf.dtype.itemsize
            groups[name] += nbytes
            first = {}  # distinct shard (its index) -> the lowest device id holding it
            for device, index in leaf.sharding.devices_indices_map(leaf.shape).items():
                key = tuple((s.start, s.stop) for s in index)
                first[key] = min(first.get(key, device.id), device.id)
            for key, device_id in first.items():
                shard = int(np.prod([(stop if stop is not None else dim) - (start or 0)
                                     for (start, stop), dim in zip(key, leaf.shape)], dtype=np.int64))
                for h in hosts:
                    per_host[h][device_id * h // devices] += shard * leaf.dtype.itemsize
    return {"config": f"configs/train.py:size={size}", "mesh": mesh, "devices": devices, "groups": groups,
            "total_bytes": sum(groups.values()), "per_host": {h: int(v.max()) for h, v in per_host.items()}}


def time_write(folder: str, nbytes: int, chunk: int = 64 << 20) -> float:
    """Seconds to write `nbytes` of random data to a new file in `folder` and fsync it (the file is removed)."""
    import numpy as np
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"preemption_budget_{os.getpid()}.bin")
    data = np.random.default_rng(0).integers(0, 256, chunk, dtype=np.uint8).tobytes()  # incompressible
    start = time.perf_counter()
    try:
        with open(path, "wb") as f:
            left = nbytes
            while left > 0:
                left -= f.write(data[:min(chunk, left)])
            f.flush()
            os.fsync(f.fileno())
        return time.perf_counter() - start
    finally:
        os.remove(path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="paper", help="configs/train.py size (paper, full, tiny, ...)")
    parser.add_argument("--mesh", default="data=1,fsdp=8", help="the slice's mesh (its device count is faked on CPU)")
    parser.add_argument("--hosts", default="1,2", help="host counts the devices are split over, e.g. 1,2")
    parser.add_argument("--write", default=None, help="a folder: time writing one host's bytes there (fsync)")
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    args = parser.parse_args(argv)
    devices = 1
    for pair in args.mesh.split(","):
        devices *= int(pair.split("=")[1])
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"  # before jax starts
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    report = state_bytes(args.size, args.mesh, [int(h) for h in args.hosts.split(",")], devices)
    if args.write:
        nbytes = report["per_host"][min(report["per_host"])]  # the fewest hosts: the most bytes per host
        seconds = time_write(args.write, nbytes)
        report["write"] = {"folder": args.write, "bytes": nbytes, "seconds": seconds, "mb_per_s": nbytes / seconds / 1e6}
    if not args.json:
        gib = 1024 ** 3
        print(f"{report['config']} on {args.mesh}: {report['total_bytes'] / gib:.2f} GiB in all ("
              + ", ".join(f"{k} {v / gib:.3f}" for k, v in report["groups"].items()) + ")")
        for h, b in report["per_host"].items():
            print(f"  {h} host(s): at most {b / gib:.2f} GiB written per host")
        if "write" in report:
            w = report["write"]
            print(f"  writing {w['bytes'] / gib:.2f} GiB to {w['folder']} (fsync): {w['seconds']:.1f} s, "
                  f"{w['mb_per_s']:.0f} MB/s")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
