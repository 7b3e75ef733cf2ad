"""Where run folders live: a local folder, or object storage (`s3://`, `gs://`) through pyarrow's
filesystems, which Ray Train also writes its checkpoints through.

A run in object storage is worked on through a local mirror on the driver's machine
(`~/.cache/bigmodel_ray/storage/...`, or `$BIGMODEL_RAY_CACHE`): `pull` makes the mirror a copy
of the run's own files (spec, epoch log, result, plots, the chosen model) before the run reads
them, and `push` sends what the run wrote back. A train run's checkpoints never pass through it:
the workers write them to the bucket themselves, so no node needs a folder that others mount.
A sweep goes further: Tune and the trials write to the bucket themselves, wherever they run,
and the driver brings what they wrote into its mirror (`refresh`) to read the results.

Credentials are never part of a job (the job file is stored with the run): each process finds
them as the cloud's SDKs do (AWS_ACCESS_KEY_ID/..., an instance profile, a service account).
An S3-compatible server's address may come from AWS_ENDPOINT_URL(_S3) or `storage_options`.
"""

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from bigmodel_ray.errors import SpecError

# The default `storage` of jobs that do not set one (a cluster's nodes get it from its cluster file).
STORAGE_ENV = "BIGMODEL_RAY_STORAGE"
# Options that carry secrets: refused in a job (they would be stored with the run and sent to
# every process that reads it).
SECRET_OPTIONS = frozenset({"access_key", "secret_key", "session_token", "access_token", "credentials_file_path",
                            "role_arn", "external_id"})
# Ray's own files in a run folder: read through Ray (its checkpoints can be large), never mirrored.
RAY_OWNED = ("checkpoint_", ".validate_storage_marker")
OURS = "sent from here"


def is_remote(storage: str) -> bool:
    return "://" in storage and not storage.startswith("file://")


def filesystem(uri: str, options: dict | None = None):
    """(pyarrow filesystem, path inside it) for a storage URI; ValueError names a bad option."""
    import pyarrow.fs as pafs

    options = dict(options or {})
    secret = sorted(SECRET_OPTIONS & set(options))
    if secret:
        raise ValueError(f"storage_options.{secret[0]}: credentials never go in a job (it is stored with the run); "
                         f"set them in the environment, as the cloud's SDK reads them")
    scheme, _, path = uri.partition("://")
    path = path.rstrip("/")
    if options and scheme not in ("s3", "gs", "gcs"):
        raise ValueError(f"storage_options: only for s3:// and gs:// storage (got {scheme}://)")
    try:
        if scheme == "s3":
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            return pafs.S3FileSystem(**({"endpoint_override": endpoint} if endpoint else {}) | options), path
        if scheme in ("gs", "gcs"):
            # Google's client libraries read STORAGE_EMULATOR_HOST as: a local emulator, no credentials.
            if emulator := os.environ.get("STORAGE_EMULATOR_HOST"):
                how, _, host = emulator.rpartition("://")
                options = {"anonymous": True, "endpoint_override": host, "scheme": how or "http"} | options
            return pafs.GcsFileSystem(**options), path
        return pafs.FileSystem.from_uri(uri)
    except TypeError as e:       # an option the filesystem does not take
        raise ValueError(f"storage_options: {e}") from None
    except (ValueError, OSError) as e:       # pyarrow's ArrowInvalid: unknown scheme, bad URI
        raise ValueError(f"storage: {uri} is not a storage URI pyarrow opens ({str(e).splitlines()[0][:200]})") from None


def cache_dir() -> Path:
    """This user's cache: fetched and generated data sets, tokenizers, run mirrors."""
    root = Path(os.environ.get("BIGMODEL_RAY_CACHE") or Path.home() / ".cache" / "bigmodel_ray")
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_root() -> Path:
    return cache_dir() / "storage"


@dataclass
class RunFolder:
    """One run folder: `local` is where this process reads and writes its files; for a run in
    object storage, `fs`/`remote` say where it lives (else both None)."""
    local: Path
    uri: str
    fs: object = None
    remote: str | None = None
    _sent: dict = field(default_factory=dict, repr=False)      # file -> (size, mtime) when last pulled or sent
    # relative path -> the stored file's (size, mtime) when this process last copied it, or
    # OURS for a file this process sends: what `refresh` need not fetch again.
    _seen: dict = field(default_factory=dict, repr=False)

    def ray_storage(self) -> dict:
        """RunConfig's storage arguments for a Ray run named after this folder, inside it."""
        if self.fs is None:
            return {"storage_path": str(self.local.parent)}
        return {"storage_path": str(PurePosixPath(self.remote).parent), "storage_filesystem": self.fs}

    def pull(self) -> None:
        """Make the local mirror a copy of the run's own files in storage (nothing there: empty).
        Ray's checkpoints stay in storage: Ray reads them there."""
        if self.fs is not None:
            with _said(f"cannot read {self.uri}"):
                _remove_mirror(self.local)
                self._sent.clear()
                self._seen.clear()
                self.local.mkdir(parents=True)
                self._fetch_changed()

    def refresh(self) -> None:
        """Bring into the mirror what others wrote to storage since this process last looked
        (a sweep's trials and Tune, on any node), leaving the files this process sends alone
        (and Ray's checkpoints, as `pull` does)."""
        if self.fs is not None:
            with _said(f"cannot read {self.uri}"):
                self._fetch_changed()

    def fetch(self, name: str) -> None:
        """One file of the run from storage into the mirror, if it is stored."""
        if self.fs is not None:
            with _said(f"cannot read {self.uri}"):
                self._fetch_changed(only=name)

    def _fetch_changed(self, only: str | None = None) -> None:
        import pyarrow.fs as pafs

        if only is not None:
            infos = self.fs.get_file_info([f"{self.remote}/{only}"])
        else:
            infos = self.fs.get_file_info(pafs.FileSelector(self.remote, allow_not_found=True, recursive=True))
        for info in infos:
            relative = PurePosixPath(info.path).relative_to(self.remote)
            if info.type != pafs.FileType.File or any(p.startswith(RAY_OWNED) for p in relative.parts):
                continue
            stored = (info.size, info.mtime_ns)
            if self._seen.get(relative) in (OURS, stored):
                continue
            target = self.local / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(info.path, str(target), source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
            self._sent[target], self._seen[relative] = _version(target), stored

    def push(self, *names: str) -> None:
        """Send the run's files (or just `names`: files or folders) from the mirror to storage, those changed since
        they were last sent; each file is replaced whole, so a reader never sees half of one.
        Deepest first: a folder's top-level files name what is below them. Hidden folders (a
        sweep trial's own Ray Train runs) are the scratch of the process that made them: kept."""
        if self.fs is not None and self.local.exists():
            with _said(f"cannot write {self.uri}"):
                self._push(names)

    def _push(self, names) -> None:
        import pyarrow.fs as pafs

        tops = [self.local / n for n in names] if names else [self.local]
        paths = [p for top in tops for p in ([top] if top.is_file() else top.rglob("*"))]
        for path in sorted(paths, key=lambda p: -len(p.parts)):
            relative = path.relative_to(self.local)
            if (not path.is_file() or path.name.endswith(".tmp") or any(p.startswith(".") for p in relative.parts)
                    or self._sent.get(path) == (version := _version(path))):
                continue
            pafs.copy_files(str(path), f"{self.remote}/{relative.as_posix()}",
                            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
            self._sent[path], self._seen[PurePosixPath(relative.as_posix())] = version, OURS

    def remove(self, name: str) -> None:
        """Delete a file or folder of the run, in the mirror and in storage."""
        local = self.local / name
        if local.is_dir():
            shutil.rmtree(local, ignore_errors=True)
        else:
            local.unlink(missing_ok=True)
        if self.fs is not None:
            import pyarrow.fs as pafs

            with _said(f"cannot write {self.uri}"):
                path = f"{self.remote}/{name}"
                kind = self.fs.get_file_info(path).type
                if kind == pafs.FileType.Directory:
                    self.fs.delete_dir(path)
                elif kind == pafs.FileType.File:
                    self.fs.delete_file(path)

    def on_this_node(self) -> "RunFolder":
        """This folder for another process, perhaps on another node (it was sent there): the same
        storage, opened as it was here, with a mirror in that process's cache."""
        if self.fs is None:
            return RunFolder(self.local, self.uri)
        return RunFolder(cache_root() / self.uri.partition("://")[0] / self.remote, self.uri, self.fs, self.remote)

    def uri_of(self, path: str) -> str:
        """A path Ray gives inside this folder's filesystem, as a URI (local: the path)."""
        return path if self.fs is None else f"{self.uri.partition('://')[0]}://{path}"


def run_folder(storage: str, name: str, options: dict | None = None) -> RunFolder:
    """The folder of run `name` under `storage` (a local folder or a URI); one object per run in
    a process, so that what it has sent is not sent again."""
    key = (storage, name, tuple(sorted((options or {}).items())), str(cache_root()))
    if key not in _FOLDERS:
        _FOLDERS[key] = _new_folder(storage, name, options)
    return _FOLDERS[key]


_FOLDERS: dict[tuple, RunFolder] = {}


def _new_folder(storage: str, name: str, options: dict | None) -> RunFolder:
    if not is_remote(storage):
        local = Path(storage.removeprefix("file://")).expanduser().resolve() / name
        return RunFolder(local, str(local))
    fs, path = filesystem(storage, options)
    scheme = storage.partition("://")[0]
    remote = f"{path}/{name}"
    return RunFolder(cache_root() / scheme / remote, f"{scheme}://{remote}", fs, remote)


def open_uri(location: str, options: dict | None = None) -> Path:
    """A run folder given on the command line or in a job (a path, or a URI: then brought into
    its mirror first), as a local folder to read."""
    if not is_remote(location):
        return Path(location).expanduser().resolve()
    storage, _, name = location.rstrip("/").rpartition("/")
    folder = run_folder(storage, name, options)
    folder.pull()
    return folder.local


def _version(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


@contextmanager
def _said(what: str):
    """Storage errors (no such bucket, no credentials, no network) in one line."""
    try:
        yield
    except OSError as e:
        raise SpecError(f"storage: {what}: {(str(e).strip().splitlines() or [type(e).__name__])[0][:300]}") from None


def _remove_mirror(local: Path) -> None:
    """Delete a mirror, and only ever a mirror: a folder under the cache root."""
    if local.exists():
        if not local.resolve().is_relative_to(cache_root().resolve()):
            raise ValueError(f"{local} is not under {cache_root()}: not removed")
        shutil.rmtree(local)
