"""Files someone else could have written never run code here, and the embedded Ray wants its token.

Each attack is first shown to work against the library call it targets (the payload runs), then
shown to be refused by bigmodel-ray with one line and exit 2, with the payload never run.
"""

import json
import os
import pickle
import stat
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bigmodel_ray import integrity
from bigmodel_ray.cli import main
from bigmodel_ray.compress.candidates import save
from bigmodel_ray.compress.chain import Candidate
from bigmodel_ray.compress.export import load_program
from bigmodel_ray.errors import SpecError


class Payload:
    """Unpickling this creates the file `marker`: proof that a load ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def candidate(tmp_path) -> Path:
    """A real compress candidate (tiny), saved and signed as a compress run saves it."""
    save([Candidate("c", nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))], tmp_path, (4,), 3, torch.randn(2, 4),
         say=print)
    return tmp_path / "candidates" / "c.pt2"


def booby_trap(program: Path, marker: Path) -> None:
    """Rewrite a .pt2 in place: its first weight becomes a pickle that creates `marker`."""
    items = []
    with zipfile.ZipFile(program) as archive:
        for item in archive.infolist():
            data = archive.read(item.filename)
            if item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True
                trapped = first["path_name"]
                data = json.dumps(config).encode()
            items.append((item, data))
    with zipfile.ZipFile(program, "w") as archive:
        for item, data in items:
            archive.writestr(item, pickle.dumps(Payload(marker)) if item.filename.endswith(f"/{trapped}") else data)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_trapped_candidate_is_refused_before_anything_is_unpickled(candidate, tmp_path, capsys):
    marker = tmp_path / "pwned"
    booby_trap(candidate, marker)
    # The attack is real: torch.export.load runs the payload while reading the weights.
    with pytest.raises(RuntimeError):          # it fails afterwards, too late
        torch.export.load(str(candidate))
    assert marker.exists()
    marker.unlink()

    assert main(["export", str(candidate)]) == 2
    assert "was changed after it was written" in one_line_error(capsys)
    (tmp_path / "result.json").write_text(json.dumps({"selected": "c"}))       # the run folder's way in
    assert main(["export", str(tmp_path)]) == 2
    one_line_error(capsys)
    assert not marker.exists()


def test_only_this_users_key_opens_a_candidate(candidate, tmp_path, monkeypatch):
    model, info = load_program(candidate)                   # signed here: it loads
    assert model(torch.randn(5, 4)).shape == (5, 3) and info["input_shape"] == [4]

    monkeypatch.setenv(integrity.KEY_ENV, str(tmp_path / "someone_elses.key"))
    with pytest.raises(SpecError, match="signed with another key"):
        load_program(candidate)
    monkeypatch.delenv(integrity.KEY_ENV)

    info_file = candidate.with_suffix(".json")
    info_file.write_text(json.dumps({k: v for k, v in info.items() if k != "hmac_sha256"}))
    with pytest.raises(SpecError, match="carries no signature"):
        load_program(candidate)


def test_the_signing_key_must_be_private(tmp_path, monkeypatch):
    key = tmp_path / "k"
    monkeypatch.setenv(integrity.KEY_ENV, str(key))
    assert len(integrity.signing_key()) == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600
    key.chmod(0o644)
    with pytest.raises(SpecError, match="readable by no one else"):
        integrity.signing_key()


@pytest.mark.parametrize("result, message", [
    ({"selected": "../../elsewhere/c"}, "selected: not a candidate name"),
    ({"checkpoint": "/etc"}, "is not a checkpoint inside"),
    ({"checkpoint": "../outside"}, "is not a checkpoint inside"),
    ([1, 2], "not a run's result"),
])
def test_result_json_cannot_send_a_loader_out_of_the_run_folder(tmp_path, capsys, result, message):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "outside").mkdir()
    (run / "result.json").write_text(json.dumps(result))
    assert main(["export", str(run)]) == 2
    assert message in one_line_error(capsys)


def test_a_pickled_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "state.pt").write_bytes(pickle.dumps({"model": Payload(marker)}))
    assert main(["export", str(folder)]) == 2
    assert "not a checkpoint written by bigmodel-ray" in one_line_error(capsys)
    assert not marker.exists()


@pytest.mark.parametrize("args, message", [
    ({"channels": [2**16, 2**16]}, "describes"),       # would allocate hundreds of GB
    ({"channels": [-1, 8]}, "cannot build cnn2d"),
])
def test_checkpoint_metadata_is_checked_before_a_model_is_built(tmp_path, capsys, args, message):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({"model": {"w": torch.zeros(10)}, "meta": {"model": {"name": "cnn2d", "args": args},
                                                          "input_shape": [1, 8, 8], "num_classes": 10}},
               folder / "state.pt")
    assert main(["export", str(folder)]) == 2
    assert message in one_line_error(capsys)


def test_a_sweep_folder_others_can_write_is_not_resumed(ray_cluster, tiny_job, tmp_path):
    from ray import tune

    from bigmodel_ray import kinds
    from bigmodel_ray.spec import load_job

    job = tiny_job("shared", resources={"workers": 1, "cpus_per_worker": 0.5}, train={"epochs": 1}, search={
        "space": {"train.optimizer.lr": "choice([0.01, 0.02])"}, "search_alg": "grid"})
    sweep_dir = tmp_path / "runs" / "shared"
    sweep_dir.mkdir(parents=True)
    marker = tmp_path / "pwned"
    (sweep_dir / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)))
    (sweep_dir / "tuner.pkl").chmod(0o666)                  # what another user's write access looks like
    assert tune.Tuner.can_restore(str(sweep_dir))           # Tune would unpickle it
    with pytest.raises(SpecError, match="tuner.pkl: writable by other users"):
        kinds.run(load_job(job), str(job), say=lambda *_: None)
    assert not marker.exists()


def test_check_private_accepts_a_sticky_shared_parent_and_refuses_open_folders(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)                                    # like /tmp
    mine = shared / "sweep"
    mine.mkdir(mode=0o755)
    (mine / "state").write_text("x")
    integrity.check_private(mine, [mine / "state"])
    mine.chmod(0o775)
    with pytest.raises(SpecError, match="sweep: writable by other users"):
        integrity.check_private(mine, [])
    mine.chmod(0o755)
    (mine / "link").symlink_to(mine / "state")
    with pytest.raises(SpecError, match="symbolic link"):
        integrity.check_private(mine, [mine / "link"])


def test_the_embedded_ray_refuses_requests_without_its_token(ray_cluster):
    from bigmodel_ray import runtime

    token_file = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    assert os.environ["RAY_AUTH_MODE"] == "token" and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    url = f"{runtime.STATE_API}/api/jobs/"
    assert runtime.STATE_API.startswith("http://127.0.0.1:")
    for headers, code in (({}, 401), ({"Authorization": "Bearer " + "0" * 64}, 403)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
        assert refused.value.code == code
    ok = urllib.request.urlopen(urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token_file.read_text().strip()}"}), timeout=10)
    assert ok.status == 200


def test_a_killed_runs_token_is_removed_by_the_next_run(tmp_path, monkeypatch):
    """The embedded Ray's token folder goes at exit; a run killed before its exit handler leaves
    it, and the next embedded Ray removes it (its process is gone), never a living process's."""
    import subprocess
    import sys
    import tempfile

    from bigmodel_ray import runtime

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan, living = (tmp_path / f"{runtime.TOKEN_PREFIX}{pid}-abc" for pid in (gone.stdout.strip(), os.getpid()))
    for folder in (orphan, living):
        folder.mkdir()
        (folder / "token").write_text("secret")
    runtime._remove_orphan_tokens()
    assert not orphan.exists() and (living / "token").exists()


def test_nothing_here_loads_torch_files_without_weights_only():
    """A guard on the code itself: every torch.load says weights_only=True, and nothing else
    unpickles (pickle / torch.export.load appear only where integrity checks come first)."""
    root = Path(__file__).resolve().parents[1] / "bigmodel_ray"
    offenders = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        for number, line in enumerate(text.splitlines(), 1):
            code = line.split("#")[0]
            if "torch.load(" in code and "weights_only=True" not in code:
                offenders.append(f"{path.name}:{number}")
            if ("pickle.load" in code or "torch.export.load" in code) and path.name != "export.py":
                offenders.append(f"{path.name}:{number}")
    assert offenders == [], offenders
