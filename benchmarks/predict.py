"""`bigmodel-ray predict` (Ray Data, actor pool) vs a plain loop, and its memory as the data grows.

The model: a real run, trained here for one epoch by `bigmodel-ray run` on 600 of the images
(image folder, cnn2d with channels [16, 32], 28x28 RGB, normalized); its weights do not change
the speed.

1. Throughput over the same N real PNG files (default 20,000 generated 28x28 RGB images, in
   10 folders), side by side in one run:
     plain loop  one process, torch threads = the machine's cores: list the files, then per batch
                 of --batch-size rows read + decode (data/images.py, as training does), scale and
                 normalize (train/inputs.py's ModelInputs), the model, softmax; nothing written;
     predict     `python -m bigmodel_ray predict RUN DIR --out F.parquet --actors A` in a
                 subprocess (its own embedded Ray), same batch size, for each A of --actors
                 (default 1 and 2): files listed, then decode + model in an actor pool of A (Ray
                 Data fuses the two steps into the actors; torch threads = cores / A), one
                 parquet file written. Images/s from its own summary line (the streaming part:
                 actor start and model load included, Ray's start not), and end to end (process
                 start to exit). Steady state: (10N - N) / (its time for 10N - for N), which
                 leaves out what every run pays once.
   Ratio predict / plain loop. Every output is checked: all rows, ids in path order.
2. Streaming: predict over N and 10N images (the same N files written 10 times): peak RSS of the
   driver process and of its whole process tree (the driver and every descendant: its embedded
   Ray's GCS, raylet, dashboard, Ray Data task workers and actors), sampled every 0.2 s with
   psutil. RSS sums count shared pages (the object store) in every process that maps them.
   Ratio 10N / N for each: flat memory is ~1.0. (With the first of --actors.)

    python benchmarks/predict.py [--images 20000] [--size 28] [--batch-size 256] [--actors 1 2]
"""

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = [f"class{c}" for c in range(10)]
TRAIN_IMAGES = 600
COPIES = 10


def write_images(root: Path, n: int, size: int, copies: int = 1, labelled: bool = False) -> list[str]:
    """n generated images as PNG files (copies x n files), in class folders when `labelled`."""
    from bigmodel_ray.data.synthetic import generate

    paths = []
    for start in range(0, n, 1000):
        images, labels = generate(np.arange(start, min(n, start + 1000)), size, len(CLASSES), 3, split_seed=0)
        encoded = [cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes() for img in images]
        for copy in range(copies):
            for i, (data, label) in enumerate(zip(encoded, labels)):
                folder = root / (CLASSES[label] if labelled else f"part{copy}-{(start + i) % 10}")
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{start + i:06d}.png"
                path.write_bytes(data)
                paths.append(str(path))
    return paths


def train_run(tmp: Path, size: int) -> Path:
    write_images(tmp / "train", TRAIN_IMAGES, size, labelled=True)
    job = {"name": "predict_bench", "storage": str(tmp / "runs"),
           "data": {"source": "image_folder", "path": str(tmp / "train"), "test_fraction": 0.2,
                    "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}},
           "model": {"name": "cnn2d", "args": {"channels": [16, 32]}},
           "train": {"epochs": 1, "batch_size": 32}, "resources": {"workers": 1}}
    (tmp / "job.yaml").write_text(yaml.safe_dump(job))
    subprocess.run([sys.executable, "-m", "bigmodel_ray", "run", str(tmp / "job.yaml")], check=True,
                   stdout=subprocess.DEVNULL)
    return tmp / "runs" / "predict_bench"


def plain_loop(run_dir: Path, folder: Path, batch_size: int) -> dict:
    import torch

    from bigmodel_ray.data.images import decode, read_file
    from bigmodel_ray.data.sources import IMAGE_EXTENSIONS
    from bigmodel_ray.predict.inputs import find_inputs
    from bigmodel_ray.predict.run import open_run
    from bigmodel_ray.train.inputs import ModelInputs
    from bigmodel_ray.train.state import load_model

    torch.set_num_threads(os.cpu_count())
    run = open_run(run_dir)
    fmt = find_inputs(str(folder), run).fmt
    model, inputs = load_model(run.checkpoint), ModelInputs(run.data, seed=0)
    start = time.perf_counter()
    files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    rows = 0
    for i in range(0, len(files), batch_size):
        x = np.stack([decode(read_file(f), fmt, f).transpose(2, 0, 1) for f in files[i:i + batch_size]])
        with torch.inference_mode():
            probs = torch.softmax(model(inputs(torch.from_numpy(x))).float(), dim=1).numpy()
        rows += len(probs)
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "images_per_s": rows / seconds}


def run_predict(run_dir: Path, folder: Path, out: Path, actors: int, batch_size: int) -> dict:
    """The CLI in a subprocess; peak RSS of it and of its whole process tree, sampled every 0.2 s."""
    psutil = _psutil()
    cmd = [sys.executable, "-m", "bigmodel_ray", "predict", str(run_dir), str(folder), "--out", str(out),
           "--overwrite", "--actors", str(actors), "--batch-size", str(batch_size)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driver = psutil.Process(proc.pid)
    peak = {"driver": 0, "tree": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                tree = [driver, *driver.children(recursive=True)]
                rss = {p.pid: _rss(p, psutil) for p in tree}
                peak["driver"] = max(peak["driver"], rss[driver.pid])
                peak["tree"] = max(peak["tree"], sum(rss.values()))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    found = re.search(r": ([\d,]+) predictions in ([\d.]+)s", stdout)
    rows, seconds = int(found[1].replace(",", "")), float(found[2])
    return {"rows": rows, "seconds": seconds, "images_per_s": rows / seconds, "wall_s": wall,
            "end_to_end_images_per_s": rows / wall, "driver_peak_rss_mb": peak["driver"] / 2**20,
            "tree_peak_rss_mb": peak["tree"] / 2**20}


def _psutil():
    """The psutil that Ray bundles: importing ray puts ray/thirdparty_files on sys.path."""
    import ray  # noqa: F401

    return importlib.import_module("psutil")


def _rss(p, psutil) -> int:
    try:
        return p.memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def check_output(out: Path, n: int) -> None:
    import pyarrow.parquet as pq

    ids = pq.read_table(out, columns=["id"]).column(0).to_pylist()
    assert len(ids) == n and ids == sorted(ids), f"{out}: {len(ids)} rows, in path order: {ids == sorted(ids)}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    n, b = args.images, args.batch_size
    print(f"load average at start: {os.getloadavg()[0]:.1f} (other tenants of this machine)", flush=True)

    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        run_dir = train_run(tmp, args.size)
        print(f"trained {run_dir} in {time.perf_counter() - t:.0f}s", flush=True)
        t = time.perf_counter()
        write_images(tmp / "small", n, args.size)
        write_images(tmp / "large", n, args.size, copies=COPIES)
        print(f"wrote {n:,} + {COPIES * n:,} PNG files ({args.size}x{args.size} RGB) in "
              f"{time.perf_counter() - t:.0f}s", flush=True)

        plain = plain_loop(run_dir, tmp / "small", b)
        print(f"plain loop: {plain}", flush=True)
        small = {}
        for actors in args.actors:
            small[actors] = run_predict(run_dir, tmp / "small", tmp / "small.parquet", actors, b)
            check_output(tmp / "small.parquet", n)
            print(f"predict N, {actors} actor(s): {small[actors]}", flush=True)
        first = args.actors[0]
        large = run_predict(run_dir, tmp / "large", tmp / "large.parquet", first, b)
        check_output(tmp / "large.parquet", COPIES * n)
        print(f"predict 10N, {first} actor(s): {large}", flush=True)
        plain_after = plain_loop(run_dir, tmp / "small", b)
        print(f"plain loop again: {plain_after}", flush=True)

    print(f"load average at end: {os.getloadavg()[0]:.1f}", flush=True)
    cores = os.cpu_count()
    steady = (COPIES - 1) * n / (large["seconds"] - small[first]["seconds"])
    print(f"\n{n:,} PNG images {args.size}x{args.size} RGB, cnn2d [16, 32], batch {b}, {cores} cores")
    print(f"  plain loop ({cores} torch threads)          {plain['images_per_s']:>7,.0f} images/s   "
          f"(after the predict runs: {plain_after['images_per_s']:,.0f})")
    for actors, r in small.items():
        print(f"  predict --actors {actors}                    {r['images_per_s']:>7,.0f} images/s   "
              f"{r['images_per_s'] / plain['images_per_s']:.2f}x plain   (end to end, Ray's start included: "
              f"{r['end_to_end_images_per_s']:,.0f}/s in {r['wall_s']:.1f}s)")
    print(f"  predict --actors {first}, steady state       {steady:>7,.0f} images/s   "
          f"{steady / plain['images_per_s']:.2f}x plain   ((10N - N) / (t10N - tN))")
    print(f"peak RSS, MB (--actors {first})  {n:>10,} {COPIES * n:>10,}    ratio")
    for key, label in (("driver_peak_rss_mb", "driver"), ("tree_peak_rss_mb", "process tree")):
        print(f"  {label:<20} {small[first][key]:>10,.0f} {large[key]:>10,.0f}   {large[key] / small[first][key]:>6.2f}x")
    print(json.dumps({"plain": plain, "plain_after": plain_after, "predict_n": small, "predict_10n": large,
                      "steady_images_per_s": steady, "args": vars(args)}))


if __name__ == "__main__":
    main()
