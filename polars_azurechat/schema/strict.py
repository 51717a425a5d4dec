"""Typed answers, strict mode: the schema Azure is sent.

:func:`to_strict` rewrites a JSON schema (a user's dict, or a pydantic model's
``model_json_schema()``) into the shape strict structured outputs take: every object
``additionalProperties: false``, every property ``required``, an optional property
expressed as nullable. Nothing is checked here: compiling the strict schema refuses
what has no Polars dtype.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["defs", "is_null_schema", "to_strict"]

#: Keywords dropped from the strict schema: every property is required in strict mode,
#: so a default can never apply, and some api-versions refuse the keyword.
_DROPPED_KEYWORDS: Final = frozenset({"default"})
#: ``$ref`` siblings that are only annotations (dropped rather than inlining the target).
_ANNOTATIONS: Final = frozenset({"title", "description", "default", "examples"})


def is_null_schema(schema: Any) -> bool:
    """Whether ``schema`` is exactly ``{"type": "null"}``."""
    return (
        isinstance(schema, dict) and schema.get("type") == "null" and len(schema) == 1
    )


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` that also accepts null (unchanged when it already does)."""
    t = schema.get("type")
    if "anyOf" in schema:
        if any(is_null_schema(m) for m in schema["anyOf"]):
            return schema
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    if t == "null" or (isinstance(t, list) and "null" in t):
        return schema
    if isinstance(t, str) and "$ref" not in schema:
        out = {**schema, "type": [t, "null"]}
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        if "const" in out:
            out["enum"] = [out.pop("const"), None]
        return out
    return {"anyOf": [schema, {"type": "null"}]}


class _Strict:
    """Rewrites a JSON schema into strict mode; checks happen later, in :class:`_Compiler`.

    ``optional_nullable``: a property missing from ``required`` becomes nullable (dict
    schemas), or simply required (pydantic: such a field has a default, and pydantic
    would refuse a null for it unless its type is already nullable).
    """

    def __init__(self, root: dict[str, Any], *, optional_nullable: bool) -> None:
        self.root = root
        self.optional_nullable = optional_nullable
        self.defs: dict[str, Any] = defs(root)

    def run(self) -> dict[str, Any]:
        out = self.rewrite(self.root)
        for key in ("$defs", "definitions"):
            block = self.root.get(key)
            if isinstance(block, dict):
                out[key] = {
                    k: self.rewrite(v) if isinstance(v, dict) else v
                    for k, v in block.items()
                }
        return out

    def rewrite(self, schema: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key in _DROPPED_KEYWORDS or key in ("$defs", "definitions"):
                continue
            if key in ("properties", "patternProperties") and isinstance(value, dict):
                out[key] = {
                    k: self.rewrite(v) if isinstance(v, dict) else v
                    for k, v in value.items()
                }
            elif key in ("items", "additionalProperties", "not") and isinstance(
                value, dict
            ):
                out[key] = self.rewrite(value)
            elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(
                value, list
            ):
                out[key] = [
                    self.rewrite(v) if isinstance(v, dict) else v for v in value
                ]
            else:
                out[key] = value
        if "oneOf" in out and "anyOf" not in out:  # strict mode knows only anyOf
            out["anyOf"] = out.pop("oneOf")
        all_of = out.get("allOf")
        if (
            isinstance(all_of, list)
            and len(all_of) == 1
            and isinstance(all_of[0], dict)
        ):
            # the ``allOf: [{$ref}]`` wrapper older generators emit: merged in
            del out["allOf"]
            out = {**out, **all_of[0]}
        if "$ref" in out and set(out) - _ANNOTATIONS - {"$ref"}:
            # strict mode takes no keywords beside $ref: the target is inlined
            target = self.defs.get(out["$ref"])
            if isinstance(target, dict):
                merged = {**self.rewrite(target), **out}
                del merged["$ref"]
                out = merged
        elif "$ref" in out:
            out = {"$ref": out["$ref"]}
        if out.get("type") == "object" or "properties" in out:
            out = self.object(out)
        return out

    def object(self, schema: dict[str, Any]) -> dict[str, Any]:
        props = schema.get("properties")
        if not isinstance(props, dict) or not props:
            return schema  # a free-form object: the compiler says why it is refused
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return schema  # extra keys with a schema: refused by the compiler
        required = set(schema.get("required") or ())
        if self.optional_nullable:
            props = {
                k: v if k in required or not isinstance(v, dict) else _nullable(v)
                for k, v in props.items()
            }
        return {
            **schema,
            "type": "object",
            "properties": props,
            "required": list(props),
            "additionalProperties": False,
        }


def defs(root: dict[str, Any]) -> dict[str, Any]:
    """The ``$defs``/``definitions`` of ``root`` by their ``$ref`` (``"#/$defs/X"``)."""
    out: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        block = root.get(key)
        if isinstance(block, dict):
            out.update({f"#/{key}/{k}": v for k, v in block.items()})
    return out


def to_strict(root: dict[str, Any], *, optional_nullable: bool) -> dict[str, Any]:
    """``root`` (with its ``$defs``) rewritten into strict mode; see :class:`_Strict`."""
    return _Strict(root, optional_nullable=optional_nullable).run()
