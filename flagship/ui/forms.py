"""Posted form fields -> documents the services take, and documents -> form state.

Inputs are named by the document path they fill (`rules.0.conditions.1.values`), which is
also the path a service's ValidationError names, so `unflatten` rebuilds the nesting and
an error lands next to its input. Values typed in a form follow one convention: a line
that reads as JSON (`42`, `true`, `"42"`) is that value, anything else is text.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping

from flagship.ui.base import Errors


def unflatten(form: Mapping[str, Any], skip: Iterable[str] = ("csrf_token", "op")) -> dict[str, Any]:
    """`{"a.0.b": x}` -> `{"a": [{"b": x}]}`; list indexes are ordered and made dense."""
    root: dict[str, Any] = {}
    for name in form:
        if name in skip:
            continue
        node = root
        parts = name.split(".")
        for part, following in zip(parts, parts[1:]):
            node = node.setdefault(_index(part), {})
            if not isinstance(node, dict):
                break
        else:
            node[_index(parts[-1])] = form[name]
    return _lists(root)


def _index(part: str) -> Any:
    return int(part) if part.isdigit() and len(part) < 6 else part


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(isinstance(k, int) for k in node):
        return [_lists(node[k]) for k in sorted(node)]
    return {str(k): _lists(v) for k, v in node.items()}


def items(value: Any) -> list[Any]:
    """A posted list (or nothing) as a list of dicts."""
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []


def parse_value(text: str) -> Any:
    """One typed value: JSON scalars as themselves, anything else as the text."""
    stripped = text.strip()
    try:
        value = json.loads(stripped)
    except ValueError:
        return stripped
    if isinstance(value, float) and not math.isfinite(value):
        return stripped
    if isinstance(value, (dict, list)):
        return stripped
    return value


def lines(text: Any) -> list[str]:
    """Non-empty stripped lines of a textarea."""
    return [line.strip() for line in str(text or "").splitlines() if line.strip()]


def words(text: Any) -> list[str]:
    """Comma- or line-separated items (tags, metric keys)."""
    return [w.strip() for w in str(text or "").replace("\n", ",").split(",") if w.strip()]


def checked(value: Any) -> bool:
    return value not in (None, "", "0", "false", "off")


def number(text: Any, path: str, errors: Errors, integer: bool = False,
           default: Any = None) -> Any:
    """A number from a text input, or `default` when blank; a bad one is a field error."""
    raw = str(text or "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        errors.add(path, "must be a whole number" if integer else "must be a number")
        return default
    if not integer and not math.isfinite(value):
        errors.add(path, "must be a finite number")
        return default
    return value


def percentage(text: Any) -> Any:
    """A percentage input: the number, or the raw text for the model to reject by path."""
    raw = str(text or "").strip()
    try:
        value = float(raw)
    except ValueError:
        return raw
    return int(value) if value.is_integer() else value


# -- conditions ---------------------------------------------------------------------------

def condition_state(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A condition document as the condition builder shows it."""
    if "segment" in doc:
        return {"kind": "segment", "segment": doc["segment"], "negate": bool(doc.get("negate")),
                "attribute": "", "operator": "", "values": ""}
    from flagship.ui.base import format_value

    return {"kind": "attribute", "attribute": doc.get("attribute", ""),
            "operator": doc.get("operator", ""), "negate": bool(doc.get("negate")),
            "values": "\n".join(format_value(v) for v in doc.get("values") or []), "segment": ""}


def condition_from_form(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Form state of one condition (checkbox and select values normalised)."""
    return {"kind": "segment" if raw.get("kind") == "segment" else "attribute",
            "attribute": str(raw.get("attribute", "")).strip(),
            "operator": str(raw.get("operator", "")), "values": str(raw.get("values", "")),
            "negate": checked(raw.get("negate")), "segment": str(raw.get("segment", ""))}


def is_blank(condition: Mapping[str, Any]) -> bool:
    if condition["kind"] == "segment":
        return not condition["segment"]
    return not condition["attribute"] and not lines(condition["values"])


def condition_doc(state: Mapping[str, Any]) -> dict[str, Any]:
    """The document of one condition's form state."""
    if state["kind"] == "segment":
        return {"segment": state["segment"], "negate": state["negate"]}
    return {"attribute": state["attribute"], "operator": state["operator"],
            "values": [parse_value(line) for line in lines(state["values"])],
            "negate": state["negate"]}


def conditions_from_form(raw: Any) -> list[dict[str, Any]]:
    return [condition_from_form(c) for c in items(raw)]


def empty_condition(operator: str) -> dict[str, Any]:
    return {"kind": "attribute", "attribute": "", "operator": operator, "values": "",
            "negate": False, "segment": ""}


def apply_condition_op(conditions: list[dict[str, Any]], op: str, operator: str) -> None:
    """`add` or `remove:<i>` on a list of condition states (form buttons without JS logic)."""
    if op == "add":
        conditions.append(empty_condition(operator))
    elif op.startswith("remove:"):
        index = _int(op.split(":")[1])
        if index is not None and 0 <= index < len(conditions):
            del conditions[index]


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def op_parts(op: str) -> list[str]:
    """`"up:2"` -> `["up", "2"]`."""
    return op.split(":")


def variant_value(text: str, flag_type: str, path: str, errors: Errors) -> Any:
    """A variant's value typed in a form, read as the flag's type requires."""
    raw = text.strip()
    if flag_type == "boolean":
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        errors.add(path, "must be true or false")
        return raw
    if flag_type == "number":
        return number(raw, path, errors, default=raw)
    if flag_type == "json":
        try:
            return json.loads(raw)
        except ValueError as err:
            errors.add(path, f"must be JSON: {err}")
            return raw
    return text
