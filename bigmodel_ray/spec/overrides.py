"""Changing a job before it is validated: `--set KEY.PATH=VALUE` overrides and a trial's values,
both set at dotted paths."""

import copy
from typing import Any

from bigmodel_ray.errors import SpecError
from bigmodel_ray.spec.messages import cut, shown
from bigmodel_ray.spec.yaml_input import MAX_DEPTH, MAX_FILE_BYTES, BadYAML, load_yaml


def _index(part: str) -> int | None:
    # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
    return int(part) if part.isascii() and part.isdigit() and len(part) <= 9 else None


def set_path(raw: dict, dotted: str, value) -> None:
    """Set `value` at a dotted path in place; sections are created as needed, and a number
    indexes a list (`compress.methods.1.amount`). Raises KeyError naming the bad prefix."""
    node, parts = raw, dotted.split(".")
    if len(parts) > MAX_DEPTH:
        raise KeyError(f"{shown(dotted)}: more than {MAX_DEPTH} levels deep")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            index = _index(part)
            if index is None or index >= len(node):
                raise KeyError(f"{'.'.join(parts[:i])}: has {len(node)} entries; {shown(part)} is not one of them")
            if last:
                node[index] = value
            node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise KeyError(f"{'.'.join(parts[:i])}: is not a section")


def apply_overrides(raw: dict, overrides, source) -> dict:
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {cut(item)}: expected KEY.PATH=VALUE")
        if len(value) > MAX_FILE_BYTES:
            raise SpecError(f"--set {cut(item)}: value is longer than a job file may be ({MAX_FILE_BYTES:,} characters)")
        try:
            parsed = load_yaml(value)
        except BadYAML as e:
            raise SpecError(f"--set {cut(item)}: value is {e.what}") from None
        try:
            set_path(raw, key, parsed)
        except KeyError as e:
            raise SpecError(f"{source}: {e.args[0]} (--set {cut(item)})") from None
    return raw


def apply(raw_job: dict, config: dict[str, Any]) -> dict:
    """The job with the trial's values set at their dotted paths (a new dict)."""
    job = copy.deepcopy(raw_job)
    for path, value in config.items():
        try:
            set_path(job, path, copy.deepcopy(value))
        except KeyError as e:
            raise SpecError(f"{e.args[0]} (searching {path})") from None
    return job
