"""Changing a job before it is validated: `--set KEY.PATH=VALUE` overrides and a trial's values,
both set at dotted paths."""

import copy
from typing import Any

import yaml

from bigmodel_ray.errors import SpecError


def set_path(raw: dict, dotted: str, value) -> None:
    """Set `value` at a dotted path in place; sections are created as needed, and a number
    indexes a list (`compress.methods.1.amount`). Raises KeyError naming the bad prefix."""
    node, parts = raw, dotted.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise KeyError(f"{'.'.join(parts[:i])}: has {len(node)} entries; {part!r} is not one of them")
            if last:
                node[int(part)] = value
            node = node[int(part)]
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
            raise SpecError(f"--set {item}: expected KEY.PATH=VALUE")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise SpecError(f"--set {item}: value is not valid YAML") from None
        try:
            set_path(raw, key, parsed)
        except KeyError as e:
            raise SpecError(f"{source}: {e.args[0]} (--set {item})") from None
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
