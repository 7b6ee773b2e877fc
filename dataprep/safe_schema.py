"""JSON Schemas that come from data (a tool's ``parameters`` inside an input line), compiled so
that no schema can make a run fetch, hang or crash.

A schema written by whoever wrote the input is untrusted code for the validator:

- ``$ref`` to ``http://…`` made jsonschema fetch the URL (and a server that never answers hung
  the run). Here every reference must point inside the schema (``#…``), and the registry the
  validator resolves through refuses to retrieve anything, so not even a reference hidden behind
  an ``$id`` can reach the network.
- ``pattern: "^(a+)+$"`` made Python's backtracking ``re`` run for minutes on a 30-character
  string. Patterns here run on RE2 (``google-re2``), whose matching time is linear in the input:
  the result is the same on every machine, which a timeout could not promise. RE2 lacks
  backreferences and lookaround; a pattern that needs them is refused, not run on ``re``.
- an invalid ``type`` or an unresolvable reference raised from deep inside the validator. The
  schema is checked against the 2020-12 metaschema first, and what can only fail while validating
  (a reference that points nowhere, a reference loop) is caught there.
- work that grows faster than the input: ``uniqueItems`` on an array of objects compares every
  pair (hours for the 500k objects a 4 MB line can hold) and a few ``$ref``/``allOf`` levels that
  each double the work reach 2^30 steps. ``uniqueItems`` here is one pass over canonical JSON, and
  every keyword evaluation draws on a budget of :data:`MAX_STEPS` per record.

Each refusal is a problem with its own reason code (``tool_schema_invalid``,
``tool_schema_remote_ref``, ``tool_schema_unresolvable_ref``, ``tool_schema_too_complex``), never
an exception.

>>> parameters_problems({"$ref": "http://example.com/s.json"}, {})[0][0]
'tool_schema_remote_ref'
>>> parameters_problems({"type": "string", "pattern": "^(a+)+$"}, "a" * 30 + "!")[0][2]
'"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!" does not match "^(a+)+$"'
"""

from __future__ import annotations

import contextvars
import json
import math
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import re2
from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators
from jsonschema import _keywords as keywords
from jsonschema.exceptions import SchemaError
from referencing import Registry
from referencing.exceptions import NoSuchResource, Unresolvable

Problem = tuple[str, str, str]

# RE2 bounds its own memory; 8 MB is plenty for any sane pattern and refuses a monstrous one.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # RE2 would print each refused pattern to stderr
_RE2_OPTIONS.max_mem = 8 << 20


def _refuse(uri: str) -> Any:
    # Called for any reference the schema itself does not hold: nothing is ever fetched.
    raise NoSuchResource(ref=uri)


_OFFLINE = Registry(retrieve=_refuse)  # type: ignore[call-arg]


class PatternError(ValueError):
    """A ``pattern`` RE2 cannot compile."""


class TooComplex(Exception):
    """Validation of one record used up its :data:`MAX_STEPS`."""


# Keyword evaluations allowed per record: the real search_hotels schema needs under 200 for the
# longest call, 20k take a fraction of a second, an exponential schema would need billions.
MAX_STEPS = 20_000
MAX_PATTERNS = 32
_BUDGET: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("budget",
                                                                           default=None)


def _spend(n: int = 1) -> None:
    left = _BUDGET.get()
    if left is not None:
        left[0] -= n
        if left[0] < 0:
            raise TooComplex


def _counted(keyword: Callable[..., Any]) -> Callable[..., Iterator[ValidationError]]:
    def run(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
        # A keyword's work grows with its own value (enum, required, properties): charge for it,
        # so 20k evaluations of a 200k-member enum cannot pass for 20k cheap steps.
        _spend(1 + (len(value) >> 6) if isinstance(value, (list, dict)) else 1)
        errors = keyword(validator, value, instance, schema)
        if errors is not None:
            yield from errors
    return run


def _canonical(value: Any) -> Any:
    # JSON equality: 1 == 1.0, but true != 1; key order does not matter.
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _unique_items(validator: Any, unique: Any, instance: Any,
                  schema: Any) -> Iterator[ValidationError]:
    if not unique or not validator.is_type(instance, "array"):
        return
    _spend(len(instance))
    seen: set[str] = set()
    for item in instance:
        key = json.dumps(_canonical(item), sort_keys=True, ensure_ascii=False)
        if key in seen:
            yield ValidationError(f"{_short(instance)} has non-unique elements")
            return
        seen.add(key)


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Any:
    """The RE2 program for a JSON Schema ``pattern``; raises :class:`PatternError`."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as e:
        detail = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) \
            else str(e)
        raise PatternError(f"pattern {_short(pattern)} is not a regular expression RE2 can run "
                           f"({detail}; backreferences and lookaround are not supported)") from None


def _search(pattern: str, text: str) -> bool:
    _spend()
    return compile_pattern(pattern).search(text) is not None


# -- the keywords jsonschema implements with Python's re, re-implemented on RE2 ----------------
def _pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(patrn, instance):
        yield ValidationError(f"{_short(instance)} does not match {_short(patrn)}")


def _pattern_properties(validator: Any, pattern_properties: dict[str, Any], instance: Any,
                        schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any,
                           schema: Any) -> Iterator[ValidationError]:
    if "patternProperties" not in schema:
        yield from keywords.additionalProperties(validator, additional, instance, schema)
        return
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema["patternProperties"])
    extras = [k for k in instance
              if k not in properties and not any(_search(p, k) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        yield ValidationError(f"{', '.join(map(repr, sorted(extras)))} not allowed: no "
                              f"property or pattern {patterns} admits it")


def _regex_format(value: object) -> bool:
    if isinstance(value, str):
        compile_pattern(value)
    return True


_FORMATS = FormatChecker(formats=())
_FORMATS.checks("regex", raises=PatternError)(_regex_format)

SafeValidator = validators.extend(Draft202012Validator, {
    name: _counted(fn) for name, fn in {
        **Draft202012Validator.VALIDATORS,
        "pattern": _pattern, "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties, "uniqueItems": _unique_items,
    }.items()})


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _walk(schema: Any) -> Iterator[tuple[str, Any]]:
    """(key, value) of every object member in the schema, iteratively."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                yield key, value
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


def _compile_problem(schema: Any) -> Problem | None:
    if not isinstance(schema, (dict, bool)):
        return ("tool_schema_invalid", "", f"a schema must be an object or a boolean, found "
                f"{type(schema).__name__}")
    members = list(_walk(schema))
    for key, value in members:
        if key in ("$ref", "$dynamicRef") and isinstance(value, str) and not value.startswith("#"):
            return ("tool_schema_remote_ref", "",
                    f"{key} {_short(value)} points outside the schema; only references within "
                    "it (#/…) are followed, nothing is fetched")
    keys = {key for key, _ in members}
    patterns = sum(len(v) if k == "patternProperties" and isinstance(v, dict) else k == "pattern"
                   for k, v in members)
    if patterns > MAX_PATTERNS:
        return ("tool_schema_too_complex", "", f"{patterns} patterns; at most {MAX_PATTERNS} are "
                "allowed in a tool schema")
    if "unevaluatedProperties" in keys and "patternProperties" in keys:
        # jsonschema evaluates this pair with Python's re; RE2 cannot be slotted in there.
        return ("tool_schema_invalid", "",
                "unevaluatedProperties together with patternProperties is not supported")
    try:
        SafeValidator.check_schema(schema, format_checker=_FORMATS)
    except SchemaError as e:
        where = "/" + "/".join(str(p) for p in e.absolute_path)
        return ("tool_schema_invalid", "", f"not a valid JSON Schema at {where}: {e.message}")
    except PatternError as e:
        return ("tool_schema_invalid", "", str(e))
    except RecursionError:
        return ("tool_schema_invalid", "", "the schema nests too deeply to check")
    return None


@lru_cache(maxsize=256)
def _compiled(key: str) -> tuple[Any, Problem | None]:
    schema = json.loads(key)
    problem = _compile_problem(schema)
    if problem is not None:
        return None, problem
    return SafeValidator(schema, registry=_OFFLINE), None


def parameters_problems(schema: Any, instance: Any) -> list[Problem]:
    """Problems of ``instance`` under an untrusted ``schema`` as (reason, pointer, message).

    Schema problems come first and alone (reason ``tool_schema_*``, empty pointer); otherwise the
    instance's errors (reason ``tool_parameters_invalid`` family, pointer into the instance).
    """
    from dataprep.schema import describe_error

    try:
        key = json.dumps(schema, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return [("tool_schema_invalid", "", "the schema is not strict JSON")]
    validator, problem = _compiled(key)
    if problem is not None:
        return [problem]
    out: list[Problem] = []
    token = _BUDGET.set([MAX_STEPS])
    try:
        for err in validator.iter_errors(instance):
            _, pointer, message = describe_error(err)
            out.append(("tool_parameters_invalid", pointer, message))
    except TooComplex:
        return [("tool_schema_too_complex", "",
                 f"checking one call against this schema takes more than {MAX_STEPS:,} steps")]
    except Unresolvable as e:
        return [("tool_schema_unresolvable_ref", "",
                 f"reference {_short(str(getattr(e, 'ref', e)))} points nowhere in the schema")]
    except PatternError as e:
        return [("tool_schema_invalid", "", str(e))]
    except RecursionError:
        return [("tool_schema_invalid", "", "the schema refers to itself without end")]
    finally:
        _BUDGET.reset(token)
    return out
