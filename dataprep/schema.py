"""JSON Schema contracts (``schemas/``) and the semantic checks a schema cannot express.

Input-layout errors are mapped to snake_case reason codes so that rejects can be counted by kind:
``missing_field``, ``null_value``, ``wrong_type``, ``invalid_value``.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from dataprep.io import value_problem
from dataprep.safe_schema import parameters_problems

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


def schema_names() -> list[str]:
    return sorted(p.name.removesuffix(".schema.json") for p in SCHEMA_DIR.glob("*.schema.json"))


@cache
def validator(name: str) -> Draft202012Validator:
    """The compiled validator for ``schemas/NAME.schema.json``."""
    path = SCHEMA_DIR / f"{name}.schema.json"
    # Only the shipped schemas: a name like "../x" must not load some other file as a contract.
    if name not in schema_names() or not path.is_file():
        raise KeyError(f"unknown schema {name!r}; available: {', '.join(schema_names())}")
    schema = json.loads(path.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number"}.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_error(error: jsonschema.ValidationError) -> tuple[str, str, str]:
    """(reason code, JSON pointer, "expected …, found …") for one schema error."""
    pointer = "/" + "/".join(str(p) for p in error.absolute_path)
    found = error.instance
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in (found or {})]
        return "missing_field", pointer, f"missing required field {', '.join(map(repr, missing))}"
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        if found is None:
            return "null_value", pointer, f"expected {expected}, found null"
        if isinstance(found, (dict, list)):
            return "wrong_type", pointer, f"expected {expected}, found {_type_name(found)}"
        return "wrong_type", pointer, f"expected {expected}, found {_type_name(found)} {_short(found)}"
    if error.validator in ("enum", "const"):
        allowed = error.validator_value if error.validator == "enum" else [error.validator_value]
        return ("invalid_value", pointer,
                f"expected one of {_short(allowed, 120)}, found {_short(found)}")
    if error.validator in ("minLength", "minItems"):
        return "empty_value", pointer, f"expected {error.validator} {error.validator_value}, found {_short(found)}"
    return "invalid_value", pointer, f"{error.message}"


def check(name: str, instance: Any) -> list[tuple[str, str, str]]:
    """All schema problems, most specific first, as (reason, pointer, message)."""
    errors = sorted(validator(name).iter_errors(instance),
                    key=lambda e: (len(list(e.absolute_path)), str(list(e.absolute_path))))
    out = []
    for err in errors:
        # An if/then failure hides the useful error in its context; report the leaf.
        leaves = list(err.context) if err.context else []
        out.extend(describe_error(leaf) for leaf in (leaves or [err]))
    return out


def semantic_problems(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rules beyond the schema, as (reason, pointer, message).

    - a tool message names a tool listed in ``tools`` and its parameters satisfy that tool's
      ``parameters`` schema;
    - a system message only comes first;
    - a tool message marked ``parallel`` follows another tool message (its group's first call);
    - the conversation has a user turn and ends with an assistant turn or a tool call (in
      ChatGLM3's format a call is an assistant turn with loss: a sample ending with one trains the
      call); a sample ending on a user or observation turn has nothing to learn at its end;
    - ``nothing_to_learn``: at least one assistant or tool turn is trained (``loss`` not false).
    """
    problems: list[tuple[str, str, str]] = []
    tools = record.get("tools")
    if isinstance(tools, list) and tools and isinstance(tools[0], str):
        problems.append(("double_encoded_tools", "/tools",
                         "expected a list of tool objects, found a list holding a JSON string"))
        tools = None
    by_name = {t.get("name"): t for t in tools or [] if isinstance(t, dict)}
    msgs = record.get("conversations") or []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        if role == "system" and i != 0:
            problems.append(("misplaced_system", f"/conversations/{i}",
                             "a system message may only come first"))
        if role == "tool" and m.get("parallel") and (
                i == 0 or not isinstance(msgs[i - 1], dict) or msgs[i - 1].get("role") != "tool"):
            problems.append(("parallel_call_alone", f"/conversations/{i}/parallel",
                             "a call marked parallel must follow another tool message"))
        if role == "tool":
            name = m.get("name")
            if name not in by_name:
                problems.append(("unknown_tool", f"/conversations/{i}/name",
                                 f"expected one of {sorted(by_name) or '(no tools)'}, found {name!r}"))
                continue
            # The tool's schema comes from the data: compiled offline, patterns on RE2.
            params_schema = by_name[name].get("parameters") or {}
            for reason, ptr, msg in parameters_problems(params_schema, m.get("parameters")):
                if reason.startswith("tool_schema"):
                    problems.append((reason, f"/tools/{name}/parameters", msg))
                else:
                    problems.append((reason, f"/conversations/{i}/parameters"
                                     f"{ptr if ptr != '/' else ''}", msg))
    roles = [m.get("role") for m in msgs if isinstance(m, dict)]
    if roles and "user" not in roles:
        problems.append(("no_user_turn", "/conversations", "expected at least one user message"))
    if roles and roles[-1] not in ("assistant", "tool"):
        problems.append(("not_ending_with_assistant", f"/conversations/{len(roles) - 1}",
                         "expected the last message to be an assistant turn or a tool call, "
                         f"found {roles[-1]!r}"))
    if roles and not any(isinstance(m, dict) and m.get("role") in ("assistant", "tool")
                         and m.get("loss", True) is not False for m in msgs):
        problems.append(("nothing_to_learn", "/conversations",
                         "no assistant turn or tool call is trained (every one has loss: false)"))
    return problems


def output_problems(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Schema plus semantic problems of one output line; empty when the line is valid.

    A value strict JSON in UTF-8 cannot hold (NaN, Infinity, a lone surrogate, nesting past
    :data:`dataprep.io.MAX_DEPTH`) is the first problem: the schema's ``number`` admits NaN."""
    bad = value_problem(record)
    if bad is not None:
        return [bad]
    problems = check("chatglm3", record)
    if problems:
        return problems
    return semantic_problems(record)
