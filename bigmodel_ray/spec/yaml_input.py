"""YAML from job files, run folders and `--set` values, read within bounds.

A job file is a few KB: a few hundred values, five or six levels deep. PyYAML's safe loader has
no limits of its own: 350 bytes of nested aliases ("billion laughs") expand to billions of
values in whatever walks the result (validation, error messages, dumping), deep nesting
overflows its recursive composer, and a 5,000-digit integer trips Python's int conversion
limit. So the loader here counts, for every node, how many values and levels it holds once
aliases are expanded, and refuses a document beyond MAX_NODES or MAX_DEPTH; an alias to the
collection that contains it (a cycle) is refused too. Every problem is one `BadYAML`, with a
line number where there is one.
"""

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, SequenceNode
from yaml.reader import ReaderError
from yaml.scanner import ScannerError

MAX_FILE_BYTES = 1 << 20      # a job file is a few KB: a bigger file is the wrong file
MAX_NODES = 10_000            # values once aliases are expanded
MAX_DEPTH = 32                # levels of nesting once aliases are expanded
MAX_NUMBER_CHARS = 100        # an integer literal (Python refuses str <-> int beyond 4,300 digits)


class BadYAML(Exception):
    """Text that is not a bounded YAML document; str() is `line N: what` (or just `what`)."""

    def __init__(self, what: str, line: int | None = None):
        super().__init__(f"line {line}: {what}" if line else what)
        self.what, self.line = what, line


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses alias bombs, cycles, deep nesting and overlong integers."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = self._composed = 0
        self._expanded: dict[int, tuple[int, int]] = {}    # id(node) -> (values, levels) with aliases expanded

    def fetch_flow_collection_start(self, TokenClass):
        # Checked in the scanner too: it looks ahead across every open `[` or `{` for a
        # possible key, which is quadratic in the nesting before the composer sees any of it.
        if self.flow_level >= MAX_DEPTH:
            raise ScannerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._expanded:       # still being composed: an ancestor
                raise ComposerError(None, None, f"alias *{event.anchor} refers to a collection that contains it",
                                    event.start_mark)
        if self._depth >= MAX_DEPTH:          # checked before recursing: PyYAML's composer is recursive
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._composed += 1                   # early, before a long flat list is read to its end
        if self._composed > MAX_NODES:
            raise ComposerError(None, None, f"more than {MAX_NODES:,} values", event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._measure(node)
        return node

    def _measure(self, node) -> None:
        if id(node) in self._expanded:        # an alias to a node measured already
            return
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        values, levels = 1, 1
        for child in children:
            child_values, child_levels = self._expanded[id(child)]
            values, levels = values + child_values, max(levels, child_levels + 1)
        if values > MAX_NODES:
            raise ComposerError(None, None, f"more than {MAX_NODES:,} values once aliases are expanded",
                                node.start_mark)
        if levels > MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels once aliases are expanded",
                                node.start_mark)
        self._expanded[id(node)] = (values, levels)

    def construct_object(self, node, deep=False):
        # A scalar that matches a tag's pattern but not its range (2001-13-45) raises a plain
        # ValueError in PyYAML: give it the node's line like any other YAML error.
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:
            raise ConstructorError(None, None, str(e), node.start_mark) from None

    def construct_yaml_int(self, node):
        if len(node.value) > MAX_NUMBER_CHARS:
            raise ConstructorError(None, None, f"an integer of {len(node.value):,} characters (at most "
                                               f"{MAX_NUMBER_CHARS})", node.start_mark)
        return super().construct_yaml_int(node)


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)


def load_yaml(data: str | bytes) -> Any:
    """One YAML document (bytes must be UTF-8); raises BadYAML."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise BadYAML(f"not UTF-8 text (byte 0x{data[e.start]:02x})", data.count(b"\n", 0, e.start) + 1) from None
    try:
        return yaml.load(data, BoundedLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise BadYAML(f"not valid YAML ({e.problem or e.context})", mark.line + 1 if mark else None) from None
    except ReaderError as e:      # a character YAML does not allow, e.g. NUL
        raise BadYAML(f"not valid YAML (character U+{e.character:04X} is not allowed)",
                      data.count("\n", 0, e.position) + 1) from None
    except yaml.YAMLError as e:
        raise BadYAML(f"not valid YAML ({type(e).__name__})") from None


def read_yaml(path: Path) -> Any:
    """The YAML document in a file; raises OSError (cannot read it) or BadYAML."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except ValueError as e:          # e.g. a NUL in the path
        raise OSError(0, str(e)) from None
    if len(data) > MAX_FILE_BYTES:
        raise BadYAML(f"larger than {MAX_FILE_BYTES >> 20} MB: not a job file")
    return load_yaml(data)
