"""Image data pipeline at 224x224 RGB: the augmentation op, the Ray Data pipeline, peak memory.

Everything is measured side by side in one run and printed as a table, then one JSON line with
every number and ratio.

1. Augmentation op alone, images/s on ONE core (cv2.setNumThreads(1), torch.set_num_threads(1)),
   same random configuration for all three (rotation 20, shifts 0.1, shear 10, zoom 0.9-1.1,
   horizontal flip, fill nearest) on the same uint8 images, random transform drawing included:
     ours   `augment.augment_batch`: one cv2.warpAffine per image (bilinear) -> uint8;
     scipy  Keras ImageDataGenerator's `apply_affine_transform`: per image, per channel
            `scipy.ndimage.affine_transform(channel, inverse 2x2 (row, col), offset, order=1,
            mode="nearest")` on the float32 image (ImageDataGenerator holds float32 arrays);
     torch  batched `F.affine_grid` + `F.grid_sample` (bilinear, border padding,
            align_corners=False), batch 64, on float32 NCHW tensors converted beforehand.
   A check warps one image with one transform all three ways and prints the mean absolute
   difference to ours in grey levels (should be < 2: they compute the same transform).
   Target: ours >= 1,000 img/s/core. Ratios ours/scipy and ours/torch.

2. Full pipeline vs the bare op, over the same N synthetic 224x224 JPEG images written as
   parquet shards by the project's own `data prepare` (`bigmodel_ray.cli.prepare.prepare`):
     bare op   one process, one core: `pipeline.transform_batch` (decode -> augment -> uint8
               CHW, what the pipeline hands to workers) in a plain loop over batches of the
               same rows (bytes read into memory once), `pipeline.batch_rows` rows per batch;
     Ray Data  `load_data(DataSpec(source=parquet, augment=...))` on an embedded Ray with
               num_cpus = os.cpu_count(), the driver consuming `iter_torch_batches(batch_size=64,
               prefetch_batches=2)` as training workers do (train/shards.py) and touching each
               batch (one byte per 4 KB page);
     DataLoader  torch `DataLoader(num_workers=2, batch_size=64)` over a map-style Dataset of the
               same bytes in memory whose __getitem__ decodes one image (cv2.imdecode, RGB),
               draws its own transform, warps it (one cv2.warpAffine) and returns uint8 CHW;
               consumed the same way. Workers start by forkserver (the process already runs Ray,
               which must not be forked) and are persistent.
     bare op xN  the same bare op in N processes at once (N = the CPUs Ray Data may use: the
               embedded Ray's CPU count, here os.cpu_count()), each on its share of the batches,
               bytes preloaded: what N cores can do with no pipeline at all.
   One warm-up pass of each, then `--rounds` rounds of one full pass of each, back to back;
   ratios are taken within each round, then the median over rounds (other tenants of a shared
   machine move absolute numbers by 10-15 % between minutes).
     Ray / bare op xN  (the pipeline's overhead on the same cores). Target >= 0.8. Also shown:
                  Ray / (1-core bare x N), which charges the pipeline for the machine's own
                  scaling loss too.
     Ray / DataLoader. Target >= 1.0.
   8,000 images by default: each pass (epoch) of a Ray Data pipeline starts a streaming
   executor (~0.9 s here) before its first batch; real epochs are far longer than that.
   Where the CPU went: around each pass of the bare op xN, Ray Data and the DataLoader, the
   CPU-s used by each process this one started (psutil), grouped (this process = the consumer,
   and for Ray also its streaming executor thread; Ray Data's task workers; Ray's own processes:
   raylet, GCS, dashboard, actors; pool or DataLoader workers), and the machine's idle CPU-s
   (/proc/stat). From these: the most a pipeline could reach against the bare op if no CPU stood
   idle = the bare op's busy CPU-s per pass / the pipeline's.

3. Peak memory of a whole training job (`python -m bigmodel_ray run JOB`, 2 workers, cnn2d with
   channels [16, 32] and stem_stride 4, batch 32, `--epochs` epochs, augmentation on) on parquet
   of `--small` and 10x `--small` synthetic 224x224 JPEG images (default 700 and 7,000; 7,000
   decoded images are 7,000 x 150,528 B = 1.05 GB). The job runs in a subprocess with its own
   RAY_TMPDIR; every 0.5 s the PSS (psutil memory_full_info().pss; RSS where PSS is unreadable)
   is summed over the subprocess and all its descendants (its embedded Ray: GCS, raylet, agents,
   Train controller and workers, Ray Data tasks). Every process carries a unique environment tag;
   every ~5 s all processes are scanned for it, to check that none lives outside the tree (any
   that did would be added to the sum). Peak summed PSS of each run, and large/small. Target
   <= 1.2. After each run every tagged process is waited for, then killed by PID if still alive.

    python benchmarks/data_pipeline.py [--quick] [--images 8000] [--small 700] [--epochs 1]
                                       [--rounds 3] [--skip-memory]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bigmodel_ray.data.augment import BORDER_MODES, AugmentConfig, augment_batch, sample_matrices  # noqa: E402

SIZE = 224
AUG = dict(rotation_range=20.0, width_shift_range=0.1, height_shift_range=0.1, shear_range=10.0,
           zoom_range=(0.9, 1.1), horizontal_flip=True, fill_mode="nearest")
CFG = AugmentConfig(**AUG)
BATCH = 64


def _rate(fn, images_per_call: int, seconds: float) -> float:
    """Images/s of fn() called repeatedly for at least `seconds`."""
    count, start = 0, time.perf_counter()
    while True:
        fn()
        count += images_per_call
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def _synthetic_images(n: int) -> np.ndarray:
    from bigmodel_ray.data.synthetic import generate

    return generate(np.arange(n), SIZE, 10, 3, 0)[0]


# ---------------------------------------------------------------------------- 1. augmentation op

def scipy_inverse(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Our forward (x, y) pixel matrix -> scipy's output->input matrix and offset in (row, col)."""
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]        # output (x, y) -> source (x, y)
    swap = [1, 0]
    return inv[:2, :2][np.ix_(swap, swap)], inv[:, 2][swap]


def scipy_warp(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Keras' apply_affine_transform: one ndimage.affine_transform per channel, order 1."""
    from scipy import ndimage

    matrix, offset = scipy_inverse(m)
    x = np.rollaxis(img, 2, 0)
    return np.stack([ndimage.affine_transform(c, matrix, offset, order=1, mode="nearest", cval=0.0) for c in x],
                    axis=2)


def torch_theta(matrices: np.ndarray, h: int, w: int) -> torch.Tensor:
    """Forward pixel matrices -> affine_grid's theta (output -> input, normalized, align_corners=False)."""
    full = np.concatenate([matrices, np.broadcast_to([0.0, 0, 1], (len(matrices), 1, 3))], axis=1)
    inv = np.linalg.inv(full)                                  # output pixel -> source pixel
    # normalized n = (2p + 1) / size - 1  <=>  p = S n + c
    s = np.diag([w / 2, h / 2, 1.0])
    s[:2, 2] = [(w - 1) / 2, (h - 1) / 2]
    theta = np.linalg.inv(s) @ inv @ s
    return torch.from_numpy(theta[:, :2].astype(np.float32))


def torch_warp(x: torch.Tensor, matrices: np.ndarray) -> torch.Tensor:
    n, c, h, w = x.shape
    grid = F.affine_grid(torch_theta(matrices, h, w), [n, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_check(img: np.ndarray) -> dict:
    """Mean |scipy - ours| and |torch - ours| in grey levels, one image, one nontrivial transform."""
    from bigmodel_ray.data.augment import affine_matrix, warp_batch

    m = affine_matrix(SIZE, SIZE, angle=17.0, tx=12.5, ty=-9.0, shear=7.0, zx=1.07, zy=0.93, flip_h=True)
    ours = warp_batch(img[None], m[None], "nearest")[0].astype(np.float64)
    sp = scipy_warp(img.astype(np.float32), m).astype(np.float64)
    th = torch_warp(torch.from_numpy(img.transpose(2, 0, 1)[None].astype(np.float32)), m[None])
    th = th[0].numpy().transpose(1, 2, 0).astype(np.float64)
    return {"scipy_mean_abs_diff": float(np.abs(sp - ours).mean()), "torch_mean_abs_diff": float(np.abs(th - ours).mean())}


def measure_augment(seconds: float, rounds: int) -> dict:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    images = _synthetic_images(BATCH)
    floats = [im.astype(np.float32) for im in images]          # ImageDataGenerator's float32 arrays
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32))
    rng = np.random.default_rng(0)

    def ours():
        augment_batch(images, CFG, rng)

    def scipy_loop():
        for img, m in zip(floats[:8], sample_matrices(CFG, 8, SIZE, SIZE, rng)):
            scipy_warp(img, m)

    def torch_batch():
        torch_warp(x, sample_matrices(CFG, BATCH, SIZE, SIZE, rng))

    check = augment_check(images[0])
    for fn in (ours, scipy_loop, torch_batch):               # warm-up
        fn()
    rates = {"ours": [], "scipy": [], "torch": []}
    for _ in range(rounds):
        rates["ours"].append(_rate(ours, BATCH, seconds))
        rates["scipy"].append(_rate(scipy_loop, 8, seconds))
        rates["torch"].append(_rate(torch_batch, BATCH, seconds))
    return {
        "ours_img_s": statistics.median(rates["ours"]), "scipy_img_s": statistics.median(rates["scipy"]),
        "torch_img_s": statistics.median(rates["torch"]),
        "ours_over_scipy": statistics.median(a / b for a, b in zip(rates["ours"], rates["scipy"])),
        "ours_over_torch": statistics.median(a / b for a, b in zip(rates["ours"], rates["torch"])),
        "rounds": rates, **check,
    }


# ---------------------------------------------------------------------------- data sets

def prepare_synthetic(out: Path, count: int, val_fraction: float, test_fraction: float) -> dict:
    """`bigmodel-ray data prepare synthetic OUT --encoding jpeg --set ...` (needs Ray running)."""
    from bigmodel_ray.cli.prepare import prepare

    return prepare("synthetic", str(out), "jpeg", [f"count={count}", f"image_size={SIZE}",
                                                   f"val_fraction={val_fraction}", f"test_fraction={test_fraction}"],
                   say=lambda _: None)


def _data_spec(path: Path):
    from bigmodel_ray.spec import AugmentSpec, DataSpec

    return DataSpec(source="parquet", path=str(path), augment=AugmentSpec(**AUG))


# ---------------------------------------------------------------------------- 2. pipeline

class EncodedImages(torch.utils.data.Dataset):
    """What a hand-written torch pipeline does: decode, draw a transform, warp, one image at a time."""

    def __init__(self, blobs: list[bytes], labels: np.ndarray, cfg: AugmentConfig):
        self.blobs, self.labels, self.cfg = blobs, labels, cfg
        self.rng = None

    def __len__(self):
        return len(self.blobs)

    def __getitem__(self, i):
        if self.rng is None:                       # one generator per worker process
            info = torch.utils.data.get_worker_info()
            self.rng = np.random.default_rng(info.seed if info else 0)
        img = cv2.imdecode(np.frombuffer(self.blobs[i], np.uint8), cv2.IMREAD_COLOR_RGB)
        h, w = img.shape[:2]
        m = sample_matrices(self.cfg, 1, h, w, self.rng)[0]
        img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=BORDER_MODES[self.cfg.fill_mode])
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), int(self.labels[i])   # uint8 CHW, as ours


def _timed_pass(batches) -> tuple[float, int, float]:
    """Images/s of consuming an iterator of (x, y) or {"x", "y"} batches, touching each; rows; s to 1st batch."""
    n, start, total, first = 0, time.perf_counter(), 0.0, None
    for b in batches:
        x = b["x"] if isinstance(b, dict) else b[0]
        # Touch one byte per 4 KB page: every page is really there, at a cost that does not
        # compete with the producers (a full x.sum() of uint8 costs ~0.35 ms/image here).
        total += float(x.reshape(len(x), -1)[:, ::4096].sum())
        n += len(x)
        first = first or time.perf_counter() - start
    return n / (time.perf_counter() - start), n, first


_BARE = {}


def _stored_batches(path: Path, rows: int) -> tuple[list[bytes], np.ndarray, list[dict]]:
    """The train split's encoded images and labels, read once, and as the pipeline's stored-row
    batches of `rows` rows (what `pipeline.transform_batch` takes)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path / "train", columns=["image", "label"])
    blobs, labels = table.column("image").to_pylist(), table.column("label").to_numpy()
    batches = [{"image": np.array(blobs[i:i + rows], dtype=object), "label": labels[i:i + rows],
                "path": np.array(["bench"] * len(blobs[i:i + rows])),
                "row_hash": np.arange(i, i + len(blobs[i:i + rows]), dtype=np.uint64)}
               for i in range(0, len(blobs), rows)]
    return blobs, labels, batches


def _bare_init(path: str, transform, rows: int) -> None:
    """A bare-op worker process: the encoded bytes in memory, the pipeline's transform, one thread.

    It gets the parent's `Transform` rather than opening the data spec: opening a parquet source
    plans Ray Datasets, which would start a Ray instance in each of these processes.
    """
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    _BARE["t"] = transform
    _BARE["batches"] = _stored_batches(Path(path), rows)[2]


def _bare_share(share: tuple[int, int]) -> tuple[int, float]:
    """Process every `step`-th batch from `first`: (images, seconds)."""
    from bigmodel_ray.data.pipeline import transform_batch

    first, step = share
    start = time.perf_counter()
    n = sum(len(transform_batch(b, _BARE["t"])["x"]) for b in _BARE["batches"][first::step])
    return n, time.perf_counter() - start


def _machine_idle_s() -> float:
    """CPU-seconds the whole machine has been idle (/proc/stat: idle + iowait)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return (int(fields[3]) + int(fields[4])) / os.sysconf("SC_CLK_TCK")


def _cpu_by_process() -> dict[int, tuple[str, float]]:
    """pid -> (name, CPU-s used so far) for this process and everything it started (Ray's
    processes, pool and DataLoader workers)."""
    import psutil

    me = psutil.Process()
    out = {}
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
            out[p.pid] = (p.name(), t.user + t.system)
        except psutil.Error:           # gone meanwhile
            pass
    return out


def _cpu_groups(before: dict, after: dict) -> dict[str, float]:
    """CPU-s used between two snapshots: this process (the consumer; for Ray also its streaming
    executor thread), Ray Data's task workers, Ray's own processes, other child processes."""
    groups = {"driver": 0.0, "data_tasks": 0.0, "ray_system": 0.0, "workers": 0.0}
    for pid, (name, cpu) in after.items():
        used = cpu - before.get(pid, (name, 0.0))[1]
        if pid == os.getpid():
            groups["driver"] += used
        elif name.startswith(("ray::IDLE", "ray::ReadParquet", "ray::MapBatches", "ray::ReadRange")):
            groups["data_tasks"] += used      # a worker's name follows the task it runs
        elif name.startswith("ray") or name in ("gcs_server", "raylet") or "dashboard" in name:
            groups["ray_system"] += used
        else:
            groups["workers"] += used          # bare-op pool / DataLoader workers
    return groups


def _accounted(run) -> tuple[float, dict[str, float]]:
    """run() -> img/s, with the CPU-s each group of processes used during it and the machine's idle CPU-s."""
    before, idle, start = _cpu_by_process(), _machine_idle_s(), time.perf_counter()
    rate = run()
    use = _cpu_groups(before, _cpu_by_process())
    use["idle"] = _machine_idle_s() - idle
    use["wall"] = time.perf_counter() - start
    return rate, use


def measure_pipeline(path: Path, rounds: int) -> dict:
    import ray

    from bigmodel_ray.data import load_data, open_pipeline
    from bigmodel_ray.data.pipeline import batch_rows, start_state, transform_batch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    spec = _data_spec(path)
    # bare op: the pipeline's own per-batch function, one process, on the bytes read once
    _, fmt, _, transform, _ = open_pipeline(spec, seed=0)
    t = transform("train")
    rows = batch_rows(fmt)
    blobs, labels, batches = _stored_batches(path, rows)

    def bare():
        start = time.perf_counter()
        n = sum(len(transform_batch(b, t)["x"]) for b in batches)
        return n / (time.perf_counter() - start)

    # Ray Data: the job's pipeline, consumed as a training worker consumes its shard
    state = start_state()
    ds = load_data(spec, seed=0, state=state).datasets["train"]
    epoch, first_batch, streaming = [0], [], []

    def ray_pass():
        epoch[0] += 1
        ray.get(state.set_epoch.remote(epoch[0]))
        rate, n, first = _timed_pass(ds.iter_torch_batches(batch_size=BATCH, prefetch_batches=2))
        assert n == len(blobs), (n, len(blobs))
        first_batch.append(first)
        streaming.append((n - BATCH) / (n / rate - first))     # after the first batch arrived
        return rate

    # The bare op on every core at once: one process per core, each on its share of the bytes.
    import multiprocessing

    cores = min(int(ray.cluster_resources().get("CPU", 1)), os.cpu_count() or 1)
    pool = multiprocessing.get_context("forkserver").Pool(cores, _bare_init, (str(path), t, rows))

    def bare_parallel():
        start = time.perf_counter()
        done = pool.map(_bare_share, [(i, cores) for i in range(cores)])
        return sum(n for n, _ in done) / (time.perf_counter() - start)

    loader = torch.utils.data.DataLoader(EncodedImages(blobs, labels, CFG), batch_size=BATCH, shuffle=True,
                                         num_workers=2, persistent_workers=True, multiprocessing_context="forkserver")

    def loader_pass():
        return _timed_pass(loader)[0]

    warm = {"bare": bare(), "bare_parallel": bare_parallel(), "ray": ray_pass(), "dataloader": loader_pass()}
    rates = {"bare": [], "bare_parallel": [], "ray": [], "dataloader": []}
    cpu = {"bare_parallel": [], "ray": [], "dataloader": []}
    for r in range(rounds):
        rates["bare"].append(bare())
        for name, run in (("bare_parallel", bare_parallel), ("ray", ray_pass), ("dataloader", loader_pass)):
            rate, use = _accounted(run)
            rates[name].append(rate)
            cpu[name].append(use)
        print(f"  pipeline round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()) + " img/s",
              flush=True)
    loader = None     # its persistent workers go now, before the pool closes
    pool.close()      # not terminate(): SIGTERM makes Ray's handler in each worker print a stack
    pool.join()
    # How many tasks the last pass ran the fused decode/augment in (each task is serial; one per input block).
    tasks = re.search(r"MapBatches\(transform_blocks\)\S*: (\d+) tasks executed", ds.stats())
    return {
        "images": len(blobs), "map_batch_rows": rows, "parquet_files": len(list((path / "train").glob("*.parquet"))),
        "map_tasks_per_pass": int(tasks[1]) if tasks else None, "cores_used": cores,
        "ray_first_batch_s": statistics.median(first_batch[1:]),
        "ray_img_s_after_first_batch": statistics.median(streaming[1:]),
        "bare_img_s_per_core": statistics.median(rates["bare"]), "ray_img_s": statistics.median(rates["ray"]),
        "dataloader_img_s": statistics.median(rates["dataloader"]),
        "bare_parallel_img_s": statistics.median(rates["bare_parallel"]),
        "efficiency": statistics.median(r / (b * cores) for r, b in zip(rates["ray"], rates["bare"])),
        "dataloader_over_bare_parallel": statistics.median(d / b for d, b in zip(rates["dataloader"], rates["bare_parallel"])),
        # CPU-s per pass by group (median over rounds), and what the pipeline could reach on these
        # cores if no CPU stood idle: the bare op's CPU-s per pass over the pipeline's busy CPU-s.
        "cpu_s_per_pass": {name: {k: round(statistics.median(u[k] for u in uses), 2) for k in uses[0]}
                           for name, uses in cpu.items()},
        "ray_ceiling_at_zero_idle": statistics.median(
            _busy(b) / _busy(u) for b, u in zip(cpu["bare_parallel"], cpu["ray"])),
        "dataloader_ceiling_at_zero_idle": statistics.median(
            _busy(b) / _busy(u) for b, u in zip(cpu["bare_parallel"], cpu["dataloader"])),
        "ray_over_bare_parallel": statistics.median(r / b for r, b in zip(rates["ray"], rates["bare_parallel"])),
        "ray_over_dataloader": statistics.median(r / d for r, d in zip(rates["ray"], rates["dataloader"])),
        "warmup": warm, "rounds": rates,
    }


def _busy(use: dict[str, float]) -> float:
    return use["driver"] + use["data_tasks"] + use["ray_system"] + use["workers"]


# What each pass's CPU report shows: (pass, label, [(group, what it is there)]).
CPU_REPORT = (
    ("bare_parallel", "bare op", [("workers", "op processes"), ("driver", "parent")]),
    ("ray", "Ray Data", [("data_tasks", "decode/augment tasks"), ("driver", "consumer + executor"),
                         ("ray_system", "raylet, GCS, actors")]),
    ("dataloader", "DataLoader", [("workers", "workers"), ("driver", "consumer")]),
)


# ---------------------------------------------------------------------------- 3. memory

JOB = """\
name: {name}
kind: train
seed: 0
storage: {storage}
data:
  source: parquet
  path: {path}
  augment: {{rotation_range: 15, width_shift_range: 0.1, height_shift_range: 0.1, horizontal_flip: true}}
model:
  name: cnn2d
  args: {{channels: [16, 32], stem_stride: 4}}
train:
  epochs: {epochs}
  batch_size: 32
resources:
  workers: 2
"""


def _mem(p) -> tuple[int, int]:
    import psutil

    try:
        rss = p.memory_info().rss
        try:
            return p.memory_full_info().pss, rss
        except psutil.AccessDenied:
            return rss, rss
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return 0, 0


def _tagged(tag: str) -> list:
    """Every live process started with our tag in its environment (the job and all it started)."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("BENCH_DATA_PIPELINE_TAG") == tag:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    return found


def _name(p) -> str:
    try:
        return f"{p.pid}:{p.name()}"
    except Exception:            # psutil.Error: gone meanwhile
        return f"{p.pid}:?"


def _watch(proc: subprocess.Popen, tag: str) -> dict:
    """Until proc exits: every 0.5 s, PSS and RSS summed over proc, its descendants (and any tagged
    process outside them, looked for every 5 s); the peaks and what held the memory at the PSS peak."""
    import psutil

    root, start = psutil.Process(proc.pid), time.perf_counter()
    peak = {"pss": 0, "rss": 0, "procs": 0, "at_s": 0.0, "top": []}
    outside, outside_seen, scans, next_scan = [], set(), 0, 0.0
    while proc.poll() is None:
        now = time.perf_counter()
        try:
            tree = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        if now >= next_scan:
            pids = {p.pid for p in tree}
            outside = [p for p in _tagged(tag) if p.pid not in pids]
            outside_seen.update(_name(p) for p in outside)
            scans, next_scan = scans + 1, now + 5.0
        mems = [(p, *_mem(p)) for p in tree + outside]
        pss, rss = sum(m[1] for m in mems), sum(m[2] for m in mems)
        if pss > peak["pss"]:
            top = sorted(mems, key=lambda m: -m[1])[:6]
            peak.update(pss=pss, procs=len(mems), at_s=round(now - start, 1),
                        top=[f"{_name(p).split(':', 1)[1][:28]} {m / 2**20:.0f}" for p, m, _ in top])
        peak["rss"] = max(peak["rss"], rss)
        time.sleep(0.5)
    return {**peak, "scans": scans, "outside": sorted(outside_seen)}


def _reap(tag: str) -> list[str]:
    """Wait up to 20 s for every tagged process to end (Ray's follow its driver), then kill the rest by PID."""
    import psutil

    deadline = time.time() + 20
    while (left := _tagged(tag)) and time.time() < deadline:
        time.sleep(0.5)
    killed = [_name(p) for p in left]
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=5)
    return killed


def run_job(job: Path, work: Path, label: str) -> dict:
    """Run one job in a subprocess with its own Ray temp dir; its peak memory, exit code and result."""
    tag = uuid.uuid4().hex
    ray_tmp = work / f"ray_{label}"
    ray_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(ray_tmp), TMPDIR=str(ray_tmp), BENCH_DATA_PIPELINE_TAG=tag,
               RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"), PYTHONUNBUFFERED="1")
    log = work / f"job_{label}.log"
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bigmodel_ray", "run", str(job)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        peak = _watch(proc, tag)
        rc = proc.wait()
    finally:
        if proc.poll() is None:          # interrupted: do not leave the job running
            proc.kill()
            proc.wait()
        killed = _reap(tag)
    wall = time.perf_counter() - start
    if rc != 0:
        print(f"job {label} failed (exit {rc}); last lines of its log:\n" + "\n".join(log.read_text().splitlines()[-30:]))
    result_file = work / "runs" / job.stem / "result.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return {
        "rc": rc, "wall_s": round(wall, 1), "peak_pss_mb": round(peak["pss"] / 2**20, 1),
        "peak_rss_mb": round(peak["rss"] / 2**20, 1), "procs_at_peak": peak["procs"], "peak_at_s": peak["at_s"],
        "top_pss_mb_at_peak": peak["top"], "tag_scans": peak["scans"], "outside_tree": peak["outside"],
        "killed_after": killed, "samples_per_s": result.get("samples_per_s_median"),
        "test_accuracy": result.get("test_accuracy"),
    }


def measure_memory(sets: dict[str, tuple[Path, int]], work: Path, epochs: int) -> dict:
    out = {}
    for label, (path, count) in sets.items():
        job = work / f"mem_{label}.yaml"
        job.write_text(JOB.format(name=f"mem_{label}", storage=work / "runs", path=path, epochs=epochs))
        out[label] = {"images": count, **run_job(job, work, label)}
        r = out[label]
        print(f"  memory {label} ({count:,} images): exit {r['rc']}, {r['wall_s']}s, peak PSS {r['peak_pss_mb']:,.0f} MB "
              f"({r['procs_at_peak']} processes), peak RSS {r['peak_rss_mb']:,.0f} MB", flush=True)
    small, large = out["small"]["peak_pss_mb"], out["large"]["peak_pss_mb"]
    out["large_over_small"] = large / small if small else None
    return out


# ---------------------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run (memory target needs full size)")
    p.add_argument("--images", type=int, help="images for the pipeline measurement (default 8000; quick 400)")
    p.add_argument("--small", type=int, help="images of the small memory data set; the large has 10x "
                                             "(default 700; quick 100)")
    p.add_argument("--epochs", type=int, default=1, help="epochs of each memory job")
    p.add_argument("--rounds", type=int, help="rounds of side-by-side measurements (default 3; quick 2)")
    p.add_argument("--seconds", type=float, help="seconds per augmentation-op measurement (default 2; quick 0.5)")
    p.add_argument("--skip-memory", action="store_true", help="skip the training-job memory measurement")
    p.add_argument("--only-memory", action="store_true", help="only the training-job memory measurement")
    args = p.parse_args()
    images = args.images or (400 if args.quick else 8000)
    small = args.small or (100 if args.quick else 700)
    rounds = args.rounds or (2 if args.quick else 3)
    seconds = args.seconds or (0.5 if args.quick else 2.0)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    res = {"config": {"images": images, "small": small, "large": 10 * small, "epochs": args.epochs, "rounds": rounds,
                      "cpus": os.cpu_count(), "torch": torch.__version__, "opencv": cv2.__version__,
                      "quick": args.quick}}
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, OpenCV {cv2.__version__}; {SIZE}x{SIZE} RGB", flush=True)

    aug = pipe = None
    if not args.only_memory:
        print("1. augmentation op, one core ...", flush=True)
        res["augment"] = aug = measure_augment(seconds, rounds)

    import ray

    from bigmodel_ray.runtime import start_ray

    work = Path(tempfile.mkdtemp(prefix="bmr_dp_"))
    try:
        start_ray(num_cpus=os.cpu_count())
        if not args.only_memory:
            print(f"2. preparing {images:,} JPEG images ...", flush=True)
            prepare_synthetic(work / "pipe", images, 0.01, 0.01)
        if not args.skip_memory:
            print(f"3. preparing {small:,} and {10 * small:,} JPEG images ...", flush=True)
            sets = {"small": (work / "mem_small_data", small), "large": (work / "mem_large_data", 10 * small)}
            for path, count in sets.values():
                prepare_synthetic(path, count, 0.05, 0.05)
        if not args.only_memory:
            print("2. pipeline ...", flush=True)
            res["pipeline"] = pipe = measure_pipeline(work / "pipe", rounds)
        ray.shutdown()
        if not args.skip_memory:
            print("3. memory of training jobs ...", flush=True)
            res["memory"] = measure_memory(sets, work, args.epochs)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    if aug is not None:
        print(f"\n1. augmentation op, img/s on one core (median of {rounds} rounds)")
        print(f"   check on one image, mean |x - ours| in grey levels: scipy {aug['scipy_mean_abs_diff']:.3f}, "
              f"torch {aug['torch_mean_abs_diff']:.3f}  (same transform: < 2)")
        print(f"   {'ours (cv2.warpAffine x1)':<34}{aug['ours_img_s']:>9,.0f}  (target >= 1,000)")
        print(f"   {'scipy.ndimage per channel (Keras)':<34}{aug['scipy_img_s']:>9,.0f}  "
              f"ours/scipy = {aug['ours_over_scipy']:.1f}x")
        print(f"   {'torch affine_grid+grid_sample':<34}{aug['torch_img_s']:>9,.0f}  "
              f"ours/torch = {aug['ours_over_torch']:.1f}x")
        print(f"2. decode + augment -> uint8 CHW batches, {pipe['images']:,} images, img/s "
              f"(median of {rounds} rounds after warm-up)")
        print(f"   {'bare op, 1 process, 1 core':<34}{pipe['bare_img_s_per_core']:>9,.0f}")
        label = f"bare op, {pipe['cores_used']} processes (no Ray)"
        print(f"   {label:<34}{pipe['bare_parallel_img_s']:>9,.0f}  "
              f"= {pipe['bare_parallel_img_s'] / pipe['bare_img_s_per_core']:.2f} x 1 core")
        print(f"   {'Ray Data pipeline':<34}{pipe['ray_img_s']:>9,.0f}  ray / bare op on the same cores = "
              f"{pipe['ray_over_bare_parallel']:.2f}  (target >= 0.8); ray / (1-core bare x {pipe['cores_used']}) "
              f"= {pipe['efficiency']:.2f}")
        print(f"   (Ray: train split in {pipe['parquet_files']} parquet file(s), decode/augment ran in "
              f"{pipe['map_tasks_per_pass']} task(s) per pass; first batch after {pipe['ray_first_batch_s']:.1f}s, "
              f"{pipe['ray_img_s_after_first_batch']:,.0f} img/s from there)")
        print(f"   {'torch DataLoader, 2 workers':<34}{pipe['dataloader_img_s']:>9,.0f}  ray / DataLoader = "
              f"{pipe['ray_over_dataloader']:.2f}  (target >= 1.0); DataLoader / bare op on the same cores = "
              f"{pipe['dataloader_over_bare_parallel']:.2f}")
        print(f"   where the CPU went, CPU-s per pass (median), machine of {os.cpu_count()} CPUs:")
        for name, label, parts in CPU_REPORT:
            use = pipe["cpu_s_per_pass"][name]
            print(f"     {label:<11}{use['wall']:5.2f} s: " + ", ".join(f"{text} {use[k]:.2f}" for k, text in parts)
                  + f", idle {use['idle']:.2f}")
        print(f"   with no CPU idle, the most the bare op's CPU-s allow: Ray Data {pipe['ray_ceiling_at_zero_idle']:.2f} "
              f"of the bare op, DataLoader {pipe['dataloader_ceiling_at_zero_idle']:.2f}")
    if "memory" in res:
        mem = res["memory"]
        print("3. training job peak memory (summed over its process tree, sampled every 0.5 s)")
        for label in ("small", "large"):
            m = mem[label]
            print(f"   {label:<6}{m['images']:>7,} images: peak PSS {m['peak_pss_mb']:>7,.0f} MB, peak RSS "
                  f"{m['peak_rss_mb']:>7,.0f} MB, {m['procs_at_peak']} processes, exit {m['rc']}, {m['wall_s']}s; "
                  f"outside tree: {len(m['outside_tree'])}, killed after: {len(m['killed_after'])}")
            print(f"{'':<9}at the peak (MB): {', '.join(m['top_pss_mb_at_peak'])}")
        note = "" if not args.quick else "; quick sizes: the target is for the full size (700 / 7,000)"
        print(f"   large / small peak PSS = {mem['large_over_small']:.3f}  (target <= 1.2{note})")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
