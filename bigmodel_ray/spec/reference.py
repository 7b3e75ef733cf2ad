"""docs/spec.md, generated from the spec's models: every key, its type, default and meaning.

    python -m bigmodel_ray.spec.reference           # rewrite docs/spec.md
    python -m bigmodel_ray.spec.reference --check   # exit 1 if docs/spec.md is stale (CI)

The descriptions are the `Field(description=...)` texts, so the reference cannot drift from
what validation accepts.
"""

import argparse
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from bigmodel_ray.spec.common import Section
from bigmodel_ray.spec.job import JobSpec

DOC = Path(__file__).resolve().parents[2] / "docs" / "spec.md"
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def render() -> str:
    out = ["# Job spec reference", "",
           "Generated from the spec's models by `python -m bigmodel_ray.spec.reference`; do not edit by hand.",
           "Unknown keys are errors. `--set KEY.PATH=VALUE` overrides any key (the value is read as YAML).",
           "Numbers must be finite and within the bounds shown; `model.args` must build the model (tried on "
           "PyTorch's meta device for the input shape the data implies). A job file is at most 1 MB, "
           "32 levels deep and 10,000 values with YAML aliases expanded.", ""]
    first = {}                     # model -> the key path it is described at
    for heading, model in _sections("", JobSpec):
        out += [f"## `{heading}`" if heading else "## the job", ""]
        if model in first:
            out += [f"The keys of `{first[model]}`.", ""]
            continue
        first[model] = heading
        if model.__doc__ and model.__doc__ is not Section.__doc__ and heading:
            out += [" ".join(model.__doc__.split()), ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            meaning = (field.description or "").replace("|", "\\|").replace("<", "&lt;")
            out.append(f"| `{name}` | {_type(field.annotation, field.metadata)} | {_default(field)} | {meaning} |")
        out.append("")
    return "\n".join(out)


def _sections(prefix: str, model: type[BaseModel], seen=None):
    """(key path, model) for the model and every section nested in it, depth first; a model
    met again is listed once more, without what is nested in it."""
    seen = set() if seen is None else seen
    yield prefix.rstrip("."), model
    if model in seen:
        return
    seen.add(model)
    for name, field in model.model_fields.items():
        for path, inner in _nested(f"{prefix}{name}", field.annotation):
            yield from _sections(path + ".", inner, seen)


def _nested(path: str, annotation):
    """Section models inside a field's type, with the key path they sit at."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield path, annotation
    elif origin is list:
        variants = [a for a in _flatten(args[0]) if isinstance(a, type) and issubclass(a, BaseModel)]
        for v in variants:
            tag = typing.get_args(v.model_fields["method"].annotation)[0] if "method" in v.model_fields else None
            yield (f"{path}[] (method: {tag})" if tag else f"{path}[]"), v
    elif origin is dict:
        yield from _nested(f"{path}.NAME", args[1])
    else:
        for a in _flatten(annotation):
            if a is not annotation:
                yield from _nested(path, a)


def _flatten(annotation) -> list:
    """The alternatives of a union (Annotated and Optional unwrapped)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _flatten(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [x for a in typing.get_args(annotation) for x in _flatten(a)]
    return [annotation]


def _type(annotation, metadata=()) -> str:
    if typing.get_origin(annotation) is typing.Annotated:       # e.g. a tuple's bounded items
        return _type(typing.get_args(annotation)[0], (*metadata, *annotation.__metadata__))
    names = []
    for a in _flatten(annotation):
        origin, args = typing.get_origin(a), typing.get_args(a)
        if a is type(None):
            names.append("null")
        elif origin is typing.Literal:
            names += [repr(x) if isinstance(x, str) else str(x).lower() for x in args]
        elif origin in (list, tuple):
            inner = "mapping" if any(isinstance(x, type) and issubclass(x, BaseModel) for x in _flatten(args[0])) \
                else _type(args[0])
            names.append(f"[{inner}, ...]" if origin is list or Ellipsis in args else f"[{', '.join(_type(x) for x in args)}]")
        elif origin is dict:
            names.append("mapping")
        elif isinstance(a, type) and issubclass(a, BaseModel):
            names.append("section")
        else:
            names.append(getattr(a, "__name__", str(a)))
    text = " \\| ".join(dict.fromkeys(names))
    bounds = _bounds(metadata)
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _bounds(metadata) -> list[str]:
    found = []
    for m in metadata:
        if isinstance(getattr(m, "metadata", None), list):      # a Field(...) inside Annotated
            found += _bounds(m.metadata)
        found += [f"{_BOUNDS[k]} {getattr(m, k)}" for k in _BOUNDS if getattr(m, k, None) is not None]
    return found


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "(section)" if isinstance(value, BaseModel) else f"`{value}`"
    if field.default is PydanticUndefined:
        return "required"
    value = field.default
    return "null" if value is None else f"`{str(value).lower() if isinstance(value, bool) else value}`"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/spec.md differs from the models")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is stale: run `python -m bigmodel_ray.spec.reference`", file=sys.stderr)
            return 1
        return 0
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
