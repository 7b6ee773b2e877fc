"""ChatGLM3's tool-call text: how a call is written after ``<|assistant|>`` and how it is read back.

Shared by the trainer (rendering calls into tokens, parsing model output in evaluation) and by
dataprep (the LLaMA-Factory export's ``call_style: official``, the sharegpt reader), so it lives
in dataprep, which never imports the trainer.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any


def render_tool_call_body(parameters: Mapping[str, Any]) -> str:
    """The fenced ``tool_call(...)`` block: keys verbatim, values as Python ``repr``.

    Official code built the call with ``ast`` + astunparse, which prints constants with repr
    (single-quoted strings, ``True``/``None``, ``2.0``, ``1e+20``, escaped ``\\u200b``).

    >>> render_tool_call_body({"type": "经济型", "price": 300.0})
    "```python\\ntool_call(type='经济型', price=300.0)\\n```"
    """
    args = ", ".join(f"{k}={v!r}" for k, v in parameters.items())
    return f"```python\ntool_call({args})\n```"


def render_tool_call(name: str, parameters: Mapping[str, Any]) -> str:
    """A tool call as the model writes it after ``<|assistant|>``: name line, then the block.

    >>> print(render_tool_call("search_hotels", {"type": "经济型"}))
    search_hotels
    ```python
    tool_call(type='经济型')
    ```
    """
    return f"{name}\n{render_tool_call_body(parameters)}"


_FENCE = re.compile(r"```(?:python)?[ \t]*\n(.*?)\n?[ \t]*```", re.DOTALL)


def parse_tool_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """Inverse of :func:`render_tool_call` for model output; ``None`` if it is not a tool call.

    Only literal keyword values are accepted (``ast.literal_eval`` per value): model output is
    never evaluated. Leading/trailing whitespace (a decoded dummy prefix) is tolerated.

    >>> parse_tool_call("search_hotels\\n```python\\ntool_call(type='经济型', price=[0, 300])\\n```")
    ('search_hotels', {'type': '经济型', 'price': [0, 300]})
    >>> parse_tool_call("推荐您去北京饭店。") is None
    True
    """
    if not isinstance(text, str):
        return None
    head, sep, rest = text.strip().partition("\n")
    name = head.strip()
    if not sep or not name or "tool_call" in name:
        return None
    fenced = _FENCE.search(rest)
    code = (fenced.group(1) if fenced else rest).strip()
    try:
        node = ast.parse(code, mode="eval").body
    except (SyntaxError, ValueError):
        return None
    if (
        not isinstance(node, ast.Call)
        or not isinstance(node.func, ast.Name)
        or node.func.id != "tool_call"
        or node.args
    ):
        return None
    params: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None or kw.arg in params:  # **kwargs or a repeated key
            return None
        try:
            params[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    return name, params
