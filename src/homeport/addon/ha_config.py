"""Add the reverse-proxy settings to Home Assistant's ``configuration.yaml``, or refuse.

What the owner asks for on the panel: make Home Assistant trust the add-on
(``http: use_x_forwarded_for: true`` and the add-on's address in
``trusted_proxies``).  The file is the owner's, hand-written, full of comments,
``!include`` and ``!secret`` tags and their own layout, so this edits it by
**careful text insertion** rather than by loading and re-dumping it:

* A YAML round-trip library (ruamel.yaml) keeps comments and tags, but it
  re-emits the *whole* file: indentation normalised, long lines re-wrapped,
  some quoting and blank lines changed.  An owner comparing the backup with the
  result would see changes in lines we had no business touching.
* Here PyYAML only *composes* the file (nodes with their line and column; no
  tag is constructed, so ``!include`` and ``!secret`` need no handler) to find
  where the ``http:`` block and its keys are.  The edit inserts whole lines (or
  turns one ``false`` into ``true``); every other byte stays as it was.
* The result is composed again and compared with the original: everything
  outside ``http:`` must be identical, every old ``http:`` setting kept, and
  the two settings must now say what we meant.  Anything else is refused.

Refused (:class:`UnsafeMerge`, with a message for the owner): YAML that does
not parse, a top level that is not a block mapping, ``http:`` given twice or
coming from another file (``http: !include http.yaml``) or written as a flow
mapping, ``trusted_proxies`` that is a single value, a flow list, a tag or has
multi-line entries, a ``use_x_forwarded_for`` we cannot rewrite in place.
The owner then gets the block to paste, as before.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["Edit", "UnsafeMerge", "add_trusted_proxies"]

_STR = "tag:yaml.org,2002:str"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_TRUE = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"}
_FALSE = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"}
#: A configuration.yaml larger than this is not ours to edit.
MAX_SIZE = 1024 * 1024


class UnsafeMerge(ValueError):
    """The file cannot be changed safely; the message says why and what to do."""


@dataclass(frozen=True)
class Edit:
    """The new text and what changed (for the panel and the log; no file content)."""

    text: str
    changed: bool
    added_proxies: tuple[str, ...] = ()
    set_forwarded_for: bool = False


def add_trusted_proxies(text: str, proxies: Sequence[str]) -> Edit:
    """``text`` with ``http: use_x_forwarded_for: true`` and ``proxies`` trusted."""
    if len(text) > MAX_SIZE:
        raise UnsafeMerge("configuration.yaml is larger than 1 MiB; add the lines yourself")
    root = _compose(text)
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines(keepends=True)
    if root is None:  # empty, or only comments
        new = _append_block(text, newline, "  ", proxies)
        return _verified(text, new, proxies, tuple(proxies), set_forwarded_for=True)
    if not isinstance(root, MappingNode) or root.flow_style:
        raise UnsafeMerge("configuration.yaml is not a list of settings (a YAML mapping)")
    entries = [(k, v) for k, v in root.value if isinstance(k, ScalarNode) and k.value == "http"]
    if len(entries) > 1:
        raise UnsafeMerge("configuration.yaml has more than one http: section")
    unit = _indent_unit(root)
    if not entries:
        new = _append_block(text, newline, unit, proxies)
        return _verified(text, new, proxies, tuple(proxies), set_forwarded_for=True)
    key, http = entries[0]
    if isinstance(http, ScalarNode):
        if http.tag == _NULL and http.value == "" and http.start_mark.line == key.start_mark.line:
            # `http:` with nothing under it: the block goes right below.
            block = _block_lines(unit, unit, proxies, newline)
            new = _insert(lines, key.start_mark.line + 1, block)
            return _verified(text, new, proxies, tuple(proxies), set_forwarded_for=True)
        if not http.tag.startswith("tag:yaml.org,2002:"):
            raise UnsafeMerge(
                f"http: comes from elsewhere ({http.tag} {http.value}); add the settings there"
            )
        raise UnsafeMerge("http: in configuration.yaml is not a section of settings")
    if not isinstance(http, MappingNode):
        raise UnsafeMerge("http: in configuration.yaml is a list, not a section of settings")
    if http.flow_style:
        raise UnsafeMerge("http: is written on one line ({…}); write it as a block to merge")
    return _merge(text, lines, newline, key, http, proxies)


def _merge(
    text: str,
    lines: list[str],
    newline: str,
    key: ScalarNode,
    http: MappingNode,
    proxies: Sequence[str],
) -> Edit:
    indent = " " * http.value[0][0].start_mark.column if http.value else "  "
    keys = {k.value: (k, v) for k, v in http.value if isinstance(k, ScalarNode)}
    inserts: list[tuple[int, list[str]]] = []  # (line index, lines), applied bottom-up
    replace: tuple[int, int, int] | None = None  # (line, start column, end column) -> "true"
    set_forwarded = False
    forwarded = keys.get("use_x_forwarded_for")
    if forwarded is None:
        inserts.append((key.start_mark.line + 1, [f"{indent}use_x_forwarded_for: true{newline}"]))
        set_forwarded = True
    else:
        value = forwarded[1]
        if not isinstance(value, ScalarNode) or value.tag != _BOOL:
            raise UnsafeMerge("http: use_x_forwarded_for is not true or false; set it to true")
        if value.value in _FALSE:
            if value.start_mark.line != value.end_mark.line or value.style is not None:
                raise UnsafeMerge("http: use_x_forwarded_for cannot be rewritten in place")
            replace = (value.start_mark.line, value.start_mark.column, value.end_mark.column)
            set_forwarded = True
    missing: tuple[str, ...] = tuple(proxies)
    listed = keys.get("trusted_proxies")
    if listed is None:
        block = [f"{indent}trusted_proxies:{newline}"]
        block += [f"{indent}  - {p}{newline}" for p in proxies]
        inserts.append((key.start_mark.line + 1, block))
    else:
        items = _proxy_items(listed[1])
        missing = tuple(p for p in proxies if not _covered(p, items))
        if missing:
            last = items[-1]
            line_text = lines[last.start_mark.line]
            dash = line_text.rfind("-", 0, last.start_mark.column)
            gap = " " * (last.start_mark.column - dash - 1)
            block = [f"{' ' * dash}-{gap}{p}{newline}" for p in missing]
            inserts.append((last.end_mark.line + 1, block))
    if not inserts and replace is None:
        return Edit(text, changed=False)
    out = list(lines)
    if out and not out[-1].endswith(("\n", "\r")):
        out[-1] += newline  # so a line can follow the last one
    if replace is not None:
        row, start, end = replace
        out[row] = out[row][:start] + "true" + out[row][end:]
    merged: dict[int, list[str]] = {}
    for index, block in inserts:  # same line: in the order they were planned
        merged.setdefault(index, []).extend(block)
    for index in sorted(merged, reverse=True):
        out[index:index] = merged[index]
    return _verified(text, "".join(out), proxies, missing, set_forwarded_for=set_forwarded)


def _proxy_items(node: Node) -> list[ScalarNode]:
    if isinstance(node, ScalarNode):
        raise UnsafeMerge(
            "http: trusted_proxies is a single value; make it a list (- …) to add the add-on"
        )
    if not isinstance(node, SequenceNode) or node.flow_style or not node.value:
        raise UnsafeMerge("http: trusted_proxies is not a list written one entry a line (- …)")
    items: list[ScalarNode] = []
    for item in node.value:
        if not isinstance(item, ScalarNode) or item.start_mark.line != item.end_mark.line:
            raise UnsafeMerge("http: trusted_proxies has an entry that is not one simple value")
        items.append(item)
    return items


def _covered(proxy: str, items: Sequence[ScalarNode]) -> bool:
    """Is ``proxy`` already trusted by one of the listed networks?"""
    wanted = ipaddress.ip_network(proxy, strict=False)
    for item in items:
        if item.tag != _STR:
            continue
        try:
            network = ipaddress.ip_network(item.value.strip(), strict=False)
        except ValueError:
            continue
        if network.version == wanted.version and wanted.subnet_of(network):  # type: ignore[arg-type]
            return True
    return False


def _compose(text: str) -> Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        where = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark is not None else ""
        raise UnsafeMerge(f"configuration.yaml is not valid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError:
        raise UnsafeMerge("configuration.yaml is not valid YAML") from None


def _indent_unit(root: MappingNode) -> str:
    """The file's own indentation step: the column of the first nested block mapping's keys."""
    for _key, value in root.value:
        if isinstance(value, MappingNode) and not value.flow_style and value.value:
            column: int = value.value[0][0].start_mark.column
            if 0 < column <= 8:
                return " " * column
    return "  "


def _block_lines(indent: str, unit: str, proxies: Sequence[str], newline: str) -> list[str]:
    block = [f"{indent}use_x_forwarded_for: true{newline}", f"{indent}trusted_proxies:{newline}"]
    return block + [f"{indent}{unit}- {p}{newline}" for p in proxies]


def _append_block(text: str, newline: str, unit: str, proxies: Sequence[str]) -> str:
    lead = "" if not text else (newline if text.endswith(("\n", "\r")) else newline * 2)
    body = "".join(_block_lines(unit, unit, proxies, newline))
    comment = f"# Added by the Homeport add-on: trust it as a reverse proxy.{newline}"
    return f"{text}{lead}{comment}http:{newline}{body}"


def _insert(lines: list[str], index: int, block: list[str]) -> str:
    out = list(lines)
    if 0 < index <= len(out) and not out[index - 1].endswith(("\n", "\r")):
        out[index - 1] += block[0][len(block[0].rstrip("\r\n")) :]  # the file's newline
    out[index:index] = block
    return "".join(out)


# ---------------------------------------------------------------- verification


def _plain(node: Node | None) -> object:
    """A comparable picture of a node: tags and values, no positions or styles."""
    if node is None:
        return None
    if isinstance(node, ScalarNode):
        return ("scalar", node.tag, node.value)
    if isinstance(node, SequenceNode):
        return ("seq", node.tag, tuple(_plain(item) for item in node.value))
    assert isinstance(node, MappingNode)
    return ("map", node.tag, tuple((_plain(k), _plain(v)) for k, v in node.value))


def _http_of(node: Node | None) -> tuple[tuple[object, ...], dict[str, Node]]:
    """(everything but http:, the http: settings by name)."""
    if node is None:
        return (), {}
    assert isinstance(node, MappingNode)
    rest = tuple(
        (_plain(k), _plain(v))
        for k, v in node.value
        if not (isinstance(k, ScalarNode) and k.value == "http")
    )
    settings: dict[str, Node] = {}
    for k, v in node.value:
        if isinstance(k, ScalarNode) and k.value == "http" and isinstance(v, MappingNode):
            settings = {sk.value: sv for sk, sv in v.value if isinstance(sk, ScalarNode)}
    return rest, settings


def _verified(
    old_text: str,
    new_text: str,
    proxies: Sequence[str],
    added: tuple[str, ...],
    *,
    set_forwarded_for: bool,
) -> Edit:
    """The edit, after proving it changed exactly the two settings and nothing else."""
    try:
        new_root = yaml.compose(new_text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        raise UnsafeMerge("the change would make configuration.yaml unreadable") from None
    old_rest, old_http = _http_of(yaml.compose(old_text, Loader=yaml.SafeLoader))
    new_rest, new_http = _http_of(new_root)
    problems = []
    if new_rest != old_rest:
        problems.append("settings outside http: would change")
    for name, value in old_http.items():
        ours = name in ("use_x_forwarded_for", "trusted_proxies")
        if not ours and (name not in new_http or _plain(new_http[name]) != _plain(value)):
            problems.append(f"http: {name} would change")
    forwarded = new_http.get("use_x_forwarded_for")
    if not (isinstance(forwarded, ScalarNode) and forwarded.value in _TRUE):
        problems.append("use_x_forwarded_for would not be true")
    listed = new_http.get("trusted_proxies")
    if not isinstance(listed, SequenceNode):
        problems.append("trusted_proxies would not be a list")
    else:
        values = [_plain(item) for item in listed.value]
        before = old_http.get("trusted_proxies")
        old_values = [_plain(i) for i in before.value] if isinstance(before, SequenceNode) else []
        if values[: len(old_values)] != old_values:
            problems.append("existing trusted_proxies entries would change")
        items = [i for i in listed.value if isinstance(i, ScalarNode)]
        if not all(_covered(p, items) for p in proxies):
            problems.append("trusted_proxies would not list the add-on")
    if set(new_http) - set(old_http) - {"use_x_forwarded_for", "trusted_proxies"}:
        problems.append("unexpected http: settings would appear")
    if problems:
        raise UnsafeMerge(
            "the change could not be made safely (" + "; ".join(problems) + "); add the lines "
            "yourself"
        )
    return Edit(new_text, changed=True, added_proxies=added, set_forwarded_for=set_forwarded_for)
