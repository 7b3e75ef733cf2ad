"""Pydantic's validation errors as one line each: `key.path: message (got VALUE)`."""

import re


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


_MESSAGES = {
    "greater_than": lambda c: f"must be > {_num(c['gt'])}",
    "greater_than_equal": lambda c: f"must be >= {_num(c['ge'])}",
    "less_than": lambda c: f"must be < {_num(c['lt'])}",
    "less_than_equal": lambda c: f"must be <= {_num(c['le'])}",
    "extra_forbidden": lambda c: "unknown key",
    "missing": lambda c: "required key is missing",
    "literal_error": lambda c: f"must be {c['expected']}",
    "model_type": lambda c: "must be a mapping of keys",
    "dict_type": lambda c: "must be a mapping of keys",
    "union_tag_invalid": lambda c: f"{c['discriminator'].strip(chr(39))} must be one of {c['expected_tags']}",
}
METHOD_TAGS = ("distill", "prune", "lowrank", "quantize", "run", "job")     # union tags pydantic puts in error paths


def describe(err: dict) -> str:
    # Drop pydantic's union-branch tags (e.g. "bool", "literal['auto']") from the key path.
    loc = ".".join(str(p) for p in err["loc"]
                   if not (isinstance(p, str) and ("[" in p or p in ("bool", "float", "int", *METHOD_TAGS))))
    make = _MESSAGES.get(err["type"])
    msg = make(err.get("ctx", {})) if make else err["msg"].removeprefix("Value error, ")
    msg = msg.replace("Input should be", "must be")
    value = err.get("input")
    # A section-level check names its own field ("path: required ..."): fold it into the key path.
    if err["type"] == "value_error" and isinstance(value, dict) and (m := re.match(r"(\w+): (.*)", msg)):
        loc, msg = f"{loc}.{m[1]}" if loc else m[1], m[2]
    if err["type"] not in ("missing", "extra_forbidden") and not isinstance(value, dict):
        msg += f" (got {value!r})"
    return f"{loc}: {msg}" if loc else msg


def one_line(e) -> str:
    """A ValidationError as its first error, and how many more there are."""
    errors = e.errors()
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return describe(errors[0]) + more
