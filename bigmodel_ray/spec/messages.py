"""Pydantic's validation errors as one line each: `key.path: message (got VALUE)`."""

import re
import reprlib

MAX_SHOWN_CHARS = 200       # of a value echoed in a message: a bad value can be megabytes
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 8, 8, 8, 8
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = MAX_SHOWN_CHARS


def cut(text: str) -> str:
    """Text from the input as it is (no quotes), cut to MAX_SHOWN_CHARS characters."""
    return text if len(text) <= MAX_SHOWN_CHARS else f"{text[:MAX_SHOWN_CHARS]}… ({len(text):,} characters)"


def shown(value) -> str:
    """The repr of a value from the input, cut to about MAX_SHOWN_CHARS characters (reprlib:
    it never walks more of a big value than it shows)."""
    if isinstance(value, str) and len(value) > MAX_SHOWN_CHARS:
        return f"{value[:MAX_SHOWN_CHARS]!r}… ({len(value):,} characters)"
    if isinstance(value, int) and value.bit_length() > 3 * MAX_SHOWN_CHARS:     # repr would be cut anyway
        return f"a {value.bit_length() * 30103 // 100000 + 1:,}-digit number"
    try:
        text = _REPR.repr(value)
    except ValueError:          # an int inside beyond Python's 4,300-digit str limit
        text = f"a {type(value).__name__}"
    return text if len(text) <= MAX_SHOWN_CHARS else f"{text[:MAX_SHOWN_CHARS]}…"


def _key(part) -> str:
    text = str(part)
    return text if len(text) <= 60 else f"{text[:60]}…"


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
    loc = ".".join(_key(p) for p in err["loc"]
                   if not (isinstance(p, str) and ("[" in p or p in ("bool", "float", "int", *METHOD_TAGS))))
    make = _MESSAGES.get(err["type"])
    msg = make(err.get("ctx", {})) if make else err["msg"].removeprefix("Value error, ")
    msg = msg.replace("Input should be", "must be")
    value = err.get("input")
    # A section-level check names its own field ("path: required ..."): fold it into the key path.
    if err["type"] == "value_error" and isinstance(value, dict) and (m := re.match(r"(\w+): (.*)", msg)):
        loc, msg = f"{loc}.{m[1]}" if loc else m[1], m[2]
    if err["type"] not in ("missing", "extra_forbidden") and not isinstance(value, dict):
        msg += f" (got {shown(value)})"
    return f"{loc}: {msg}" if loc else msg


def one_line(e) -> str:
    """A ValidationError as its first error, and how many more there are."""
    errors = e.errors()
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return describe(errors[0]) + more
