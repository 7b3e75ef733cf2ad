"""A sweep's Tune state in object storage: signed as Tune writes it, checked as Tune reads it.

Tune keeps a sweep's state as pickles (`tuner.pkl`, the searcher's and the trials' state in
`experiment_state-*.json` and friends, `params.pkl` / `error.pkl` per trial). Whoever can write
those can run code as the user who restores the sweep, and a bucket has no file owners to check.
So (integrity.py has the key and the tags):

- `SignState` tags the state files in Tune's local staging folder each time Tune saves them,
  just before Tune sends that folder to the bucket, so `signatures.json` travels with them;
  `tuner.pkl`, which Tune writes to the bucket itself once, is tagged by the driver right after.
- `verified(fs, root)` is the bucket as Tune is given it: a state file read through it is
  checked against the stored tags first, and refused unless it carries one. The check is in
  the read itself, so nothing can be swapped between a check and Tune's read.
"""

from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
from ray.tune import Callback

from bigmodel_ray import integrity
from bigmodel_ray.errors import SpecError
from bigmodel_ray.runs import RESULT_FILE
from bigmodel_ray.tracking import STATE_FILE as TRACKING_FILE

TUNER_FILE = "tuner.pkl"
# The project's own files at a sweep folder's top: data, never unpickled.
PROJECT_FILES = frozenset({RESULT_FILE, TRACKING_FILE, integrity.SIGNATURES})


def is_state(relative: PurePosixPath) -> bool:
    """Whether Tune unpickles this file of a sweep folder: the top level's .json and .pkl files
    (all that Tune restores from) and each trial folder's .pkl files."""
    parts = relative.parts
    top = len(parts) == 1 and relative.suffix in (".json", ".pkl") and relative.name not in PROJECT_FILES
    return top or len(parts) == 2 and relative.suffix == ".pkl"


def state_files(folder: Path) -> list[Path]:
    """The files of `folder` that Tune reads (unpickles) when it restores a sweep."""
    candidates = [*folder.iterdir(), *folder.glob("*/*.pkl")]
    return [p for p in candidates if (p.is_file() or p.is_symlink()) and is_state(PurePosixPath(*p.relative_to(folder).parts))]


class SignState(Callback):
    """Signs the state Tune has just saved, before Tune sends it (see the module's docstring).

    Tune saves its state (`TuneController.save_to_dir`) and asks every callback for its own
    state last, then sends the staging folder to storage: `get_state` is that moment. Returns
    None, so Tune stores nothing of this callback.
    """

    def __init__(self):
        self.trials: list = []                  # Tune's own list of trials: it grows in place
        self.tuner_tag: str | None = None       # set by the driver once Tune has written tuner.pkl

    @property
    def staging(self) -> str | None:
        # Tune tells callbacks nothing of its folders; each trial knows them. Holding Tune's list
        # (not a copy) finds the trials it adds in a step before that step's save.
        return self.trials[0].storage.experiment_driver_staging_path if self.trials else None

    def on_step_begin(self, iteration, trials, **info):
        self.trials = trials

    def get_state(self):
        self._sign()
        return None

    def on_experiment_end(self, trials, **info):
        """After Tune's last save. A restored sweep with nothing left to run takes no step, so
        that save went unsigned: sign it now and send the tags after it."""
        self.trials = trials
        if self._sign():
            storage = trials[0].storage
            pafs.copy_files(f"{self.staging}/{integrity.SIGNATURES}",
                            f"{storage.experiment_fs_path}/{integrity.SIGNATURES}",
                            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=storage.storage_filesystem)

    def _sign(self) -> bool:
        if self.staging is None or not Path(self.staging).is_dir():
            return False
        # A restored sweep's staging folder has the stored signatures.json (Tune fetches the top
        # level's .json files) with tuner.pkl's tag, which sign_files keeps.
        known = {TUNER_FILE: self.tuner_tag} if self.tuner_tag else {}
        integrity.sign_files(Path(self.staging), state_files(Path(self.staging)), known)
        return True


def sign_tuner(fs, root: str, signer: SignState) -> None:
    """Tag the `tuner.pkl` that Tune has just written to the bucket (read back at once: Tune
    writes it there directly, never through its staging folder)."""
    with fs.open_input_stream(f"{root}/{TUNER_FILE}") as f:
        signer.tuner_tag = integrity.tag_bytes(f.read())


def verified(fs, root: str) -> pafs.PyFileSystem:
    return pafs.PyFileSystem(_Verified(fs, root))


class _Verified(pafs.FileSystemHandler):
    """`fs` as is, except that a state file of the sweep at `root` is read whole and checked."""

    def __init__(self, fs, root: str):
        self.fs, self.root = fs, root.rstrip("/")

    def _read(self, path: str):
        relative = PurePosixPath(path).relative_to(self.root) if path.startswith(self.root + "/") else None
        if relative is None or not is_state(relative):
            return None
        with self.fs.open_input_stream(path) as f:
            data = f.read()
        try:
            with self.fs.open_input_stream(f"{self.root}/{integrity.SIGNATURES}") as f:
                tags = integrity.read_tags(text=f.read().decode())
        except (OSError, UnicodeDecodeError):
            tags = {}
        if not integrity.signed(data, tags.get(relative.as_posix(), [])):
            raise integrity.not_signed(f"{path}")
        return pa.BufferReader(data)

    def open_input_stream(self, path):
        return self._read(path) or self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self._read(path) or self.fs.open_input_file(path)

    # The rest: `fs` itself.
    def get_type_name(self):
        return f"verified-{self.fs.type_name}"

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise SpecError("storage: refusing to empty the whole bucket")

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)

    def __eq__(self, other):
        return isinstance(other, _Verified) and (self.fs, self.root) == (other.fs, other.root)

    def __ne__(self, other):
        return not self == other
