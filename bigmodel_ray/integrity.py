"""What may be unpickled, and only after checking who could have written it.

Almost every artifact here holds data only (state dicts read with `weights_only=True`, JSON,
YAML, ONNX). Two cannot: a compress candidate is a `torch.export` program (`.pt2`), whose
loader unpickles parts of the archive, and a sweep's Tune state (`tuner.pkl`, trial data in
`experiment_state-*.json`) is cloudpickle. Whoever can write those files can run code as the
user who loads them. So:

- A `.pt2` is signed when it is written: an HMAC-SHA256 of its bytes under a key only this user
  can read (`~/.config/bigmodel_ray/artifact.key`, mode 0600, made on first use; another file
  with `BIGMODEL_RAY_KEY_FILE`). It is loaded only if the tag verifies. A program changed by
  anyone else, or made with another key, is refused before anything in it is unpickled.
- A sweep folder is resumed (its pickles read) only if it and every file Tune reads from it are
  owned by this user and writable by no one else, as ssh's StrictModes treats `~/.ssh`.
- A sweep in object storage, where file owners say nothing, is resumed only if each file Tune
  reads carries this user's tag in the sweep's `signatures.json`, written before it is sent.
"""

import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

from bigmodel_ray.errors import SpecError

KEY_ENV = "BIGMODEL_RAY_KEY_FILE"
_given_key: bytes | None = None     # set in a sweep's trials: the driver's key, so any node signs alike


def key_file() -> Path:
    return Path(os.environ.get(KEY_ENV) or Path.home() / ".config" / "bigmodel_ray" / "artifact.key").expanduser()


def use_key(key: bytes) -> None:
    """Sign with this key in this process (a trial on another node signs with its driver's key)."""
    global _given_key
    _given_key = key


def signing_key() -> bytes:
    """This user's key; made (32 random bytes, mode 0600) on first use."""
    if _given_key is not None:
        return _given_key
    path = key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:         # another process made it first: read theirs
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(32))
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise SpecError(f"{path}: the signing key must be owned by you and readable by no one else "
                        f"(chmod 600 {path}); refusing to use it")
    key = path.read_bytes()
    if len(key) < 16:
        raise SpecError(f"{path}: too short to be a signing key ({len(key)} bytes); delete it to make a new one")
    return key


def tag(path: Path, key: bytes | None = None) -> str:
    mac = hmac.new(key or signing_key(), digestmod=hashlib.sha256)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            mac.update(block)
    return mac.hexdigest()


def verify(path: Path, expected: str | None) -> None:
    """Refuse (one line) a file whose tag is missing or does not verify under this user's key."""
    if not isinstance(expected, str) or not hmac.compare_digest(tag(path), expected):
        why = "carries no signature" if not expected else "was changed after it was written, or signed with another key"
        raise SpecError(f"{path}: {why}; refusing to load it (a .pt2 program can run code when loaded). "
                        f"Load it as the user who made it, or with that user's key ({KEY_ENV})")


def check_private(folder: Path, files) -> None:
    """Refuse (one line) unless `folder`, the folder holding it and each of `files` are owned by
    this user (or root) and writable by no one else; a shared parent such as /tmp is fine when its
    sticky bit keeps others from replacing what is ours."""
    me = os.getuid()
    for path in [folder.parent, folder, *files]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            raise SpecError(f"{path}: is a symbolic link; refusing to read a sweep's saved state through it")
        open_to_others = info.st_mode & 0o022 and not (stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX)
        if info.st_uid not in (me, 0) or open_to_others:
            who = "owned by another user" if info.st_uid not in (me, 0) else "writable by other users"
            raise SpecError(f"{path}: {who}; resuming would unpickle state that someone else could have written. "
                            f"Keep sweep folders private to you (chmod go-w), or start the sweep under a new name")


SIGNATURES = "signatures.json"
# Tags kept per file: the newest first. A sweep's state is rewritten while an earlier copy may
# still be on its way to object storage, so a stored set can mix two consecutive versions.
VERSIONS_KEPT = 3


def tag_bytes(data: bytes, key: bytes | None = None) -> str:
    return hmac.new(key or signing_key(), data, hashlib.sha256).hexdigest()


def sign_files(folder: Path, files, known: dict[str, str] | None = None) -> None:
    """Tag `files` (inside `folder`) in folder/signatures.json, beside the tags it holds already
    (files signed earlier elsewhere, earlier versions of these); `known`: tags of files that
    are not in `folder`, by name."""
    key, tags = signing_key(), read_tags(folder / SIGNATURES)
    fresh = {f.relative_to(folder).as_posix(): tag(f, key) for f in files if f.name != SIGNATURES}
    for name, new in {**(known or {}), **fresh}.items():
        tags[name] = [new, *(t for t in tags.get(name, []) if t != new)][:VERSIONS_KEPT]
    tmp = folder / (SIGNATURES + ".tmp")
    tmp.write_text(json.dumps(tags, indent=1))
    tmp.replace(folder / SIGNATURES)


def read_tags(path: Path | None = None, text: str | None = None) -> dict[str, list[str]]:
    """signatures.json as {file: [tags]}; anything else in it counts as no tags."""
    try:
        tags = json.loads(path.read_text() if text is None else text)
    except (OSError, ValueError):
        return {}
    if not isinstance(tags, dict):
        return {}
    tags = {k: [v] if isinstance(v, str) else v for k, v in tags.items()}
    return {k: [t for t in v if isinstance(t, str)] for k, v in tags.items() if isinstance(v, list)}


def signed(data: bytes, tags: list[str]) -> bool:
    actual = tag_bytes(data)
    return any(hmac.compare_digest(actual, t) for t in tags)


def not_signed(where: str) -> SpecError:
    return SpecError(f"{where}: not signed with your key ({KEY_ENV}); resuming would unpickle state that someone "
                     f"else could have written. Resume as the user who ran the sweep, or start it under a new name")


def check_signed(folder: Path, files, where: str) -> None:
    """Refuse (one line) unless every one of `files` carries this user's tag in signatures.json."""
    tags = read_tags(folder / SIGNATURES)
    for f in files:
        name = f.relative_to(folder).as_posix()
        if f.name != SIGNATURES and not signed(f.read_bytes(), tags.get(name, [])):
            raise not_signed(f"{where}/{name}")
