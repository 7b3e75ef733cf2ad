"""Malformed job input, seeded: `bigmodel-ray validate` (in-process, as main() runs it) must end
every case with exit 0, or exit 2 and one short line on stderr, within CASE_TIME_S and without
the process's memory blowing up.

The inputs are the shipped jobs/*.yaml, mutated: values replaced by numbers at the edges, odd
Unicode, wrong types, deep nesting or alias bombs; keys deleted or invented; raw bytes that are
not UTF-8; files cut short; `--set` overrides with the same trouble in keys and values; and run
folders (a compress teacher, a transfer source) whose spec.yaml is malformed.
"""

import contextlib
import io
import random
import resource
import signal
import sys
import time

import pytest
import yaml
from conftest import ROOT

from bigmodel_ray.cli import main

SEED = 0
CASES = 1200
CASE_TIME_S = 5
MAX_RSS_GROWTH_MB = 500
MAX_STDERR_CHARS = 600

BOMB = ("[&a [x, x, x, x, x, x, x, x, x], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a], "
        "&c [*b, *b, *b, *b, *b, *b, *b, *b, *b], &d [*c, *c, *c, *c, *c, *c, *c, *c, *c], "
        "&e [*d, *d, *d, *d, *d, *d, *d, *d, *d], &f [*e, *e, *e, *e, *e, *e, *e, *e, *e], "
        "&g [*f, *f, *f, *f, *f, *f, *f, *f, *f], &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]]")
BOMB_LINES = "".join(f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 9 if i else ['lol'] * 9)}]\n" for i in range(9))

# Single-line YAML values: numbers at the edges, odd strings and characters, wrong types, nesting.
SNIPPETS = [
    "0", "-1", "1", "2", "3", "2147483648", "-2147483649", "9223372036854775808", "18446744073709551616",
    "4294967296", "1" + "0" * 5000, "-" + "9" * 4400, "0x" + "f" * 300, "0b" + "1" * 20000, "1:30:00",
    ".nan", ".inf", "-.inf", "1e308", "-1e308", "1e999", "1e-320", "0.5", "-0.0", "1_000",
    "''", "'²'", "'\u202e\u200f'", '"\\0"', '"\\ud800"', '"\\udfff"', "'😀'", "\u0000", "\u00b2",
    "'" + "x" * 100_000 + "'", "'" + "é" * 5000 + "'", "'../../etc'", "'~nosuchuser/x'", '"a\\nb"',
    "null", "~", "true", "false", "[]", "{}", "[1, 2]", "[-1]", "[0, 0]", "[.nan]", "{a: 1}", "[[[[1]]]]",
    "!!binary /w==", "!!set {a, b}", "2001-12-14", "2001-13-45", "!!python/object/apply:os.system ['true']",
    "!!float 'x'", "*undefined", "&a [*a]", "{[1]: 2}", BOMB, "[" * 1500, "[" * 1200 + "]" * 1200,
    "{a: " * 1100 + "1" + "}" * 1100, "cnn2d", "mlp", "transformer", "text_lm", "digits", "mnist1d",
    "synthetic", "{name: mlp}", "{name: cnn1d, args: {channels: [-1]}}", "{num_heads: 0}", "[4, 8]",
    "{source: synthetic}", "{mean: [0.5], std: [.nan]}", "uniform(0, 1)", "'loguniform(1e-4, 1e-1)'",
    "'choice([' ", "'randint(0, " + "9" * 200 + ")'", "'grid([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]'",
]
KEY_PARTS = ["²", "0", "1", "-1", "99999999999999999999", "", "\u202e", "x" * 5000, "😀", "\u0000", "٣"]
RAW_BYTES = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\t", b"\xfe\xff", b"\x80" * 3, b"\r", b"\x1b[2J"]


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so no `except Exception` in the code under test eats it."""


def _jobs() -> dict[str, dict]:
    return {path.name: yaml.safe_load(path.read_text()) for path in sorted((ROOT / "jobs").glob("*.yaml"))}


def _paths(node, prefix=()):
    """Every key path in a parsed job (list entries by index)."""
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield from _paths(child, (*prefix, key))


def _get(node, path):
    for key in path:
        node = node[key]
    return node


def _swapped(value, rng):
    """The same value as another type."""
    if isinstance(value, dict):
        return rng.choice([list(value.values()), list(value), str(value), None])
    if isinstance(value, list):
        return rng.choice([{str(i): v for i, v in enumerate(value)}, value[:1] * 3, "x", 0])
    if isinstance(value, bool):
        return rng.choice(["yes", 1, [value]])
    if isinstance(value, int | float):
        return rng.choice([str(value), -value, [value], {"v": value}, value * 10**12])
    return rng.choice([[value], {value: value} if isinstance(value, str) else 0, 7, None, True])


def _text(job: dict, replace=None, snippet: str = "") -> str:
    """The job as YAML, with the value at path `replace` swapped for the raw snippet."""
    job = yaml.safe_load(yaml.safe_dump(job))         # a deep copy
    marker = "SNIPPETMARKER7"          # plain: safe_dump writes it unquoted
    if replace is not None:
        if replace:
            _get(job, replace[:-1])[replace[-1]] = marker
        else:
            job = {"name": marker}
    text = yaml.safe_dump(job, sort_keys=False, allow_unicode=True, width=10**9)
    return text.replace(marker, snippet)


def _file_case(rng, jobs):
    name = rng.choice(sorted(jobs))
    job = yaml.safe_load(yaml.safe_dump(jobs[name]))
    paths = list(_paths(job))[1:]
    path = rng.choice(paths)
    op = rng.choice(["snippet", "snippet", "snippet", "delete", "swap", "new key", "bytes", "cut", "bomb", "kind"])
    if op == "snippet":
        snippet = rng.choice(SNIPPETS)
        data = _text(job, path, snippet).encode("utf-8", "surrogatepass")
        return f"{name}: {'.'.join(map(str, path))} = {snippet[:60]!r}", data
    if op == "delete":
        parent = _get(job, path[:-1])
        del parent[path[-1]]
    elif op == "swap":
        _get(job, path[:-1])[path[-1]] = _swapped(_get(job, path), rng)
    elif op == "new key":
        parent = _get(job, path[:-1]) if isinstance(_get(job, path[:-1]), dict) else job
        parent[rng.choice(["extra", "²", "args", "seed", "name", "\u202e"])] = rng.choice([1, "x", [1], {"a": 1}])
    elif op == "kind":
        job["kind"] = rng.choice(["train", "compress", "transfer", "multitask", "tune", 3, None])
    data = _text(job).encode()
    if op == "bytes":
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data) + 1)
            data = data[:at] + rng.choice(RAW_BYTES) + data[at:]
    elif op == "cut":
        data = data[:rng.randrange(len(data) + 1)]
    elif op == "bomb":         # most often in a free-form field (model.args), which nothing else checks
        free = [p for p in paths if "args" in p[:-1] or "generator" in p[:-1]] or paths
        data = BOMB_LINES.encode() + data if rng.random() < 0.3 else _text(job, rng.choice(free), BOMB).encode()
    return f"{name}: {op} at {'.'.join(map(str, path))}", data


def _set_case(rng, jobs):
    name = rng.choice(sorted(jobs))
    paths = [p for p in _paths(jobs[name]) if p]
    overrides = []
    for _ in range(rng.randint(1, 3)):
        key = list(map(str, rng.choice(paths)))
        if rng.random() < 0.3:
            key.insert(rng.randrange(len(key) + 1), rng.choice(KEY_PARTS))
        if rng.random() < 0.05:
            key = ["a"] * rng.choice([33, 2000])
        overrides.append(f"--set={'.'.join(key)}={rng.choice(SNIPPETS)}")
    return f"{name}: {' '.join(o[:80] for o in overrides)}", name, overrides


def _run_folder_case(rng, jobs, folder):
    """A compress teacher or transfer source run whose spec.yaml is malformed."""
    base = jobs[rng.choice(["digits_cnn.yaml", "digits_multitask.yaml"])]
    spec = rng.choice([
        "- a\n- list\n", "42\n", "", "kind: multitask\nmultitask: {tasks: [a, b]}\n",
        "kind: multitask\nmultitask: {tasks: {a: 3, b: [1]}}\n", "kind: multitask\nmultitask: 7\n",
        "model: {name: [text_lm]}\ndata: {source: digits}\n", "model: 3\ndata: [1]\n",
        BOMB_LINES, "a: " + "[" * 2000, _text(base, rng.choice(list(_paths(base))[1:]), rng.choice(SNIPPETS)),
    ])
    data = spec.encode("utf-8", "surrogatepass")
    if rng.random() < 0.2:
        data += rng.choice(RAW_BYTES)
    (folder / "spec.yaml").write_bytes(data)
    if rng.random() < 0.5:
        job, key = "digits_compress.yaml", "compress.teacher"
    else:
        job, key = "digits_transfer.yaml", "transfer.source"
    overrides = [f"--set={key}={folder}"]
    if rng.random() < 0.5:
        overrides.append(f"--set={key}_task={rng.choice(['a', 'b', 'zz', '[1]', '{a: 1}'])}")
    return f"{job}: {key} -> spec.yaml {spec[:60]!r}", job, overrides


def _call(argv) -> tuple[object, str]:
    """main(argv)'s exit code (or the exception that escaped it) and its stderr."""
    err = io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_TIME_S)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
    except Hang:
        rc = "hang"
    except BaseException as e:          # SystemExit too: main returns its code, it never exits
        rc = e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return rc, err.getvalue()


def _alarm(signum, frame):
    raise Hang()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # peak; KB on Linux


@pytest.mark.skipif(sys.platform != "linux", reason="SIGALRM and ru_maxrss in KB: Linux")
def test_malformed_input_ends_in_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)              # relative run folders (runs/...) resolve to nothing here
    rng, jobs = random.Random(SEED), _jobs()
    for job in jobs:             # untimed: imports and each model's first build on the meta device
        _call(["validate", str(ROOT / "jobs" / job)])
    start_rss, started = _rss_mb(), time.monotonic()
    ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()     # the session's, in a full run
    counts = {"clean errors": 0, "accepted": 0, "tracebacks": 0, "bad messages": 0, "hangs": 0, "memory": 0}
    failures = []
    for i in range(CASES):
        kind = rng.random()
        if kind < 0.55:
            what, data = _file_case(rng, jobs)
            path = tmp_path / "job.yaml"
            path.write_bytes(data)
            argv = ["validate", str(path)]
        elif kind < 0.9:
            what, job, overrides = _set_case(rng, jobs)
            argv = ["validate", str(ROOT / "jobs" / job), *overrides]
        else:
            folder = tmp_path / f"run{i}"
            folder.mkdir()
            what, job, overrides = _run_folder_case(rng, jobs, folder)
            argv = ["validate", str(ROOT / "jobs" / job), *overrides]
        rc, err = _call(argv)
        one_line = err.endswith("\n") and err.count("\n") == 1 and len(err) <= MAX_STDERR_CHARS
        verdict = ("hangs" if rc == "hang" else "accepted" if rc == 0 else "tracebacks" if rc != 2
                   else "clean errors" if one_line else "bad messages")
        counts[verdict] += 1
        if verdict not in ("accepted", "clean errors"):
            failures.append(f"{verdict}: {what}: {rc!r} {err[:300]!r}")
        if _rss_mb() - start_rss > MAX_RSS_GROWTH_MB and not counts["memory"]:
            counts["memory"] += 1
            failures.append(f"memory grew {_rss_mb() - start_rss:.0f} MB: {what}")
    summary = (f"fuzz: {CASES} inputs in {time.monotonic() - started:.1f} s: "
               + ", ".join(f"{n} {k}" for k, n in counts.items()))
    print(summary)
    assert counts["tracebacks"] == counts["hangs"] == counts["bad messages"] == counts["memory"] == 0, \
        summary + "\n" + "\n".join(failures[:15])
    assert counts["clean errors"] > CASES // 2 and counts["accepted"] > 0, summary
    assert ray_before or "ray" not in sys.modules or not sys.modules["ray"].is_initialized(), "validate started Ray"
