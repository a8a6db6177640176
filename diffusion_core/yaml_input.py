"""Reading a YAML file a user (or anyone) wrote, safely: ``yaml.safe_load`` semantics with limits on the file's
size, the nodes its aliases expand to and its nesting, strict UTF-8, duplicate keys refused, and YAML 1.2's
floats (``1e-4`` is a number, as in every other YAML and JSON reader, not the string PyYAML's YAML 1.1 makes
of it). Any problem is one ``ValueError`` line; the caller names the file."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_BYTES = 1_000_000  # a sweep file is a few kB
MAX_NODES = 100_000  # after alias expansion (a "billion laughs" file expands to ~10^9)
MAX_DEPTH = 32
MERGE_TAG = "tag:yaml.org,2002:merge"
FLOAT_12 = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$")


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads YAML 1.2 floats."""

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    raise ConstructorError(None, None, "a mapping key must be a plain value", key_node.start_mark) from None
                if duplicate:
                    raise ConstructorError(None, None, f"duplicate key {key!r} (first on line {seen[key]})", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


StrictLoader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_12, list("-+0123456789."))


def _check_size(root: Node) -> None:
    """Count nodes as the constructed object would hold them (aliases expanded) and the nesting depth."""
    count, stack = 0, [(root, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ValueError(f"more than {MAX_NODES:,} values once its aliases are expanded (an alias bomb?)")
        if depth > MAX_DEPTH:
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, MappingNode):
            stack.extend((child, depth + 1) for pair in node.value for child in pair)


def _problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{where}invalid YAML ({problem})"


def parse_yaml(text: str) -> Any:
    """The object of one YAML document, within the limits above."""
    loader = StrictLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_size(root)
        return loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise ValueError(_problem(exc)) from None
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()


def read_yaml_file(path: Path) -> Any:
    """The object of the YAML file at ``path``: at most ``MAX_BYTES``, UTF-8."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the file ({getattr(exc, 'strerror', None) or exc})") from None
    if len(data) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES:,} bytes; a sweep file is a few kB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None
    return parse_yaml(text)
