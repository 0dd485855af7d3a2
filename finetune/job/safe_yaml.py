"""Reading a job file's YAML safely: no object tags, and limits on size, nesting and aliases that
are enforced while the file is read, before anything is expanded or validated.

PyYAML's safe loader refuses object tags (`!!python/object`) but has no limits: nine levels of
nine aliases (an "alias bomb") compose into a few hundred nodes that expand into millions of
values, which validation and error messages then walk. Here libyaml's parser (`yaml.cyaml.CParser`)
reads the events, and the composer below counts, as it builds the node graph, how many values
the document holds once every alias is expanded, and how deeply they nest: a file over a limit
is refused at the event that crosses it. Text must be UTF-8 (a UTF-8 byte-order mark is allowed).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from yaml.cyaml import CParser
from yaml.composer import Composer, ComposerError
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, MappingEndEvent, SequenceEndEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.resolver import Resolver

# A job file is a few hundred bytes and a few dozen values; these leave room for long grids.
MAX_BYTES = 256 * 1024
MAX_VALUES = 5_000  # scalars, lists and mappings, once every alias is expanded
MAX_DEPTH = 32  # lists and mappings inside each other

_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}


class YamlLimitError(ValueError):
    """A YAML text over one of the limits, or not UTF-8: what was found, and what was expected."""

    def __init__(self, got: str, expected: str):
        super().__init__(f"got {got}; {expected}")
        self.got, self.expected = got, expected


def read_yaml_file(path: Path) -> object:
    """The single YAML document in the file at `path`, read within the limits. OSError when the
    file cannot be read; YamlLimitError or yaml.YAMLError when its content is refused."""
    with open(path, "rb") as stream:
        data = stream.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlLimitError(f"more than {MAX_BYTES // 1024} KiB", f"expected a job file of at most "
                             f"{MAX_BYTES // 1024} KiB (the limit on job files); is it the right file?")
    return load_yaml(decode_utf8(data))


def decode_utf8(data: bytes) -> str:
    """The text of a job file, or YamlLimitError naming where it stops being UTF-8."""
    for bom, encoding in _BOMS.items():
        if data.startswith(bom):
            raise YamlLimitError(f"a {encoding} byte-order mark", "expected UTF-8 text; save the file as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise YamlLimitError(
            f"byte 0x{data[error.start]:02x} at line {line}, column {column}, which is not UTF-8 ({error.reason})",
            "expected UTF-8 text; save the file as UTF-8 (it may be in Latin-1 or another encoding)") from None


def load_yaml(text: str) -> object:
    """One YAML document from `text`, safely and within the limits."""
    loader = _LimitedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        if "maximum nesting depth" not in str(error):
            raise
        # libyaml's scanner looks ahead within flow collections ([[[...]]]) and stops at its own
        # limit of 1000 levels before the composer sees the 33rd.
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise YamlLimitError(f"nesting deeper than {MAX_DEPTH}{where}", f"expected lists and mappings nested at "
                             f"most {MAX_DEPTH} deep (the limit on job files)") from None
    finally:
        loader.dispose()


class _LimitedComposer(Composer):
    """PyYAML's composer, counting each node where it is composed and each alias at the full size of
    what it repeats, and refusing duplicate keys, which YAML readers disagree about."""

    def compose_document(self):
        self.values = 0
        self.depth = 0
        self.get_event()  # DocumentStartEvent
        node = self.compose_node(None, None)
        self.get_event()  # DocumentEndEvent
        self.anchors = {}
        return node

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            event = self.get_event()
            if event.anchor not in self.anchors:
                raise ComposerError(None, None, f"found undefined alias {event.anchor!r}", event.start_mark)
            node = self.anchors[event.anchor]
            if node.expanded is None:
                raise YamlLimitError(f"*{event.anchor} at line {event.start_mark.line + 1}, inside the value it "
                                     "repeats", "expected no alias inside its own anchor (a value cannot "
                                     "contain itself)")
            self._count(node.expanded, event)
            return node
        if self.depth >= MAX_DEPTH:
            event = self.peek_event()
            raise YamlLimitError(f"nesting deeper than {MAX_DEPTH} at line {event.start_mark.line + 1}",
                                 f"expected lists and mappings nested at most {MAX_DEPTH} deep (the limit on "
                                 "job files)")
        self.depth += 1
        node = super().compose_node(parent, index)
        self.depth -= 1
        return node

    def compose_scalar_node(self, anchor):
        node = super().compose_scalar_node(anchor)
        self._count(1, node)
        node.expanded = 1
        return node

    def compose_sequence_node(self, anchor):
        node, start = self._open_collection(SequenceNode, anchor)
        index = 0
        while not self.check_event(SequenceEndEvent):
            node.value.append(self.compose_node(node, index))
            index += 1
        node.end_mark = self.get_event().end_mark
        node.expanded = self.values - start
        return node

    def compose_mapping_node(self, anchor):
        node, start = self._open_collection(MappingNode, anchor)
        keys = set()
        while not self.check_event(MappingEndEvent):
            key = self.compose_node(node, None)
            if isinstance(key, ScalarNode):
                if (key.tag, key.value) in keys and key.tag != "tag:yaml.org,2002:merge":
                    raise YamlLimitError(f"{key.value!r} again at line {key.start_mark.line + 1}",
                                         "expected each key once in a mapping; remove one of them")
                keys.add((key.tag, key.value))
            node.value.append((key, self.compose_node(node, key)))
        node.end_mark = self.get_event().end_mark
        node.expanded = self.values - start
        return node

    def _open_collection(self, node_class, anchor):
        """A list's or mapping's node from its start event, counted, its size unknown until it ends
        (an alias to it from inside is refused); and the count before it."""
        start = self.values
        self._count(1, self.peek_event())
        event = self.get_event()
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.resolve(node_class, None, event.implicit)
        node = node_class(tag, [], event.start_mark, None, flow_style=event.flow_style)
        node.expanded = None
        if anchor is not None:
            self.anchors[anchor] = node
        return node, start

    def _count(self, values: int, where) -> None:
        self.values += values
        if self.values > MAX_VALUES:
            raise YamlLimitError(
                f"more than {MAX_VALUES} values by line {where.start_mark.line + 1}, once aliases are expanded",
                f"expected at most {MAX_VALUES} values (the limit on job files; an alias that repeats aliases "
                "multiplies what they repeat)")


class _LimitedLoader(CParser, _LimitedComposer, SafeConstructor, Resolver):
    """libyaml's parser for speed, the counting composer above, PyYAML's safe constructor (no
    object tags) and resolver. `CParser` composes in C; the composer's own methods are
    taken instead."""

    get_single_node = Composer.get_single_node
    get_node = Composer.get_node
    check_node = Composer.check_node

    def __init__(self, text: str):
        CParser.__init__(self, text)
        _LimitedComposer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
