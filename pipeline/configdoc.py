"""config/README.md from the schema, so the two cannot drift:
`python -m pipeline.configdoc > config/README.md` (a test compares them)."""

from __future__ import annotations

from .configcheck import schema

INTRO = """# Configuration keys

Generated from `workflow/schemas/config.schema.yaml` by `python -m pipeline.configdoc`; edit the
schema, not this file. `config/config.yaml` holds the defaults; override keys with
`snakemake --configfile my.yaml` (merged key by key: a file holding only `train: {K: 64}` changes
K alone). Every value is checked before any job is planned, and errors name the full key path.
"""


def _ref(node: dict) -> str | None:
    ref = node.get("$ref")
    if ref is None and "allOf" in node:
        ref = next((part["$ref"] for part in node["allOf"] if "$ref" in part), None)
    return ref.rsplit("/", 1)[-1] if ref else None


def _kind(node: dict) -> str:
    ref = _ref(node)
    if ref:
        return "name" if ref == "name" else f"see [{ref}](#{ref})"
    parts = []
    types = node.get("type")
    if types:
        parts.append(" or ".join(types) if isinstance(types, list) else types)
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    if "pattern" in node:
        parts.append(f"matching `{node['pattern']}`")
    bounds = [
        f"{sym} {node[key]}"
        for key, sym in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
        if key in node
    ]
    if bounds:
        parts.append(", ".join(bounds))
    items = node.get("items")
    if isinstance(items, dict) and items:
        parts.append(f"of {_kind(items)}")
    return "; ".join(parts)


def _rows(props: dict, prefix: str, required: set[str]) -> list[str]:
    rows = []
    for key, node in props.items():
        default = f"`{node['default']}`" if "default" in node else ("required" if key in required else "")
        cells = [f"`{prefix}{key}`", _kind(node), default, node.get("description", "")]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        inner = node.get("properties")
        if inner and not _ref(node):
            rows += _rows(inner, f"{prefix}{key}.", set(node.get("required", [])))
        entry = node.get("additionalProperties")
        if isinstance(entry, dict) and entry.get("properties") and not _ref(entry):
            rows += _rows(entry["properties"], f"{prefix}{key}.<name>.", set(entry.get("required", [])))
    return rows


def render() -> str:
    s = schema()
    head = "| key | type / allowed | default | meaning |\n|---|---|---|---|"
    out = [INTRO, "## Top level\n", head, *_rows(s["properties"], "", set(s.get("required", []))), ""]
    tables = s["properties"]["tables"]["additionalProperties"]
    out += ["`tables.<folder>.<table>`: see [table](#table).", ""]
    assert _ref(tables["additionalProperties"]) == "table"
    for name, node in s["$defs"].items():
        out += [f"## {name}\n", node.get("description", ""), ""]
        if "properties" in node:
            out += [head, *_rows(node["properties"], "", set(node.get("required", []))), ""]
        else:
            out += [f"{_kind(node)}", ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
