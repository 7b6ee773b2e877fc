"""``clean``: CJK-aware text normalisation and length limits, per message, counted by kind.

What is cleaned, and why:

- the ``content`` of ``system``/``user``/``assistant``/``observation`` messages (``roles``);
- the reader's parsed copies of that text in ``meta`` (``meta_fields``; default: the keys the
  corpus packages declare, e.g. the SPO source text and triples, the doc-QA question, answer and
  documents), with the same rules, so that ``validate``
  compares like with like ("ＡＢＳ泵" in the text and "ABS泵" in a cleaned triple would not match);
- **not** tool calls. A tool message's ``parameters`` are what the model must learn to emit
  against a real database, and its ``observation`` is database output: rewriting a hotel name there
  would break ``HotelDB.by_name`` and the validate stage's consistency checks, which compare both to
  the database verbatim. ``tool_observation: true`` opts in for observations whose strings are not
  keys (a non-database tool); parameters are never touched.

Length limits run on the cleaned text. ``min_chars``/``max_chars`` count characters;
``min_tokens``/``max_tokens`` count ChatGLM3 tokens and apply when the run config names a
``tokenizer`` (when it does not, the character limits apply, and token limits alone are an
error rather than silently no limit). Each limit is a number for every cleaned role or a mapping
per role, e.g. ``max_tokens: {user: 2048, assistant: 1024}``.

Reason codes: ``empty_field`` (a message was empty in the input), ``empty_after_clean`` (cleaning
left nothing), both rejects; ``too_short``/``too_long``, removals (good input outside the
configured limits). Stats: ``Clean.stats`` = records in/changed, changes by kind
(occurrences) and records changed by kind; each changed record's lineage gets ``clean:KIND`` ops.

>>> Clean(max_chars={"user": 4000}, t2s=True).max_chars
{'user': 4000}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dataprep.corpora import meta_fields
from dataprep.errors import ConfigError
from dataprep.record import TEXT_ROLES, Conversation
from dataprep.stages.base import RunContext, Stage, StageOptions
from dataprep.text import CHANGE_KINDS, NormalizeOptions, normalize, normalize_value

Limit = int | dict[str, int] | None


def _per_role(name: str, value: Limit, roles: tuple[str, ...]) -> dict[str, int]:
    """A limit as a role -> number mapping; rejects unknown roles and non-integers."""
    if value is None:
        return {}
    if isinstance(value, bool) or not isinstance(value, (int, dict)):
        raise ConfigError(f"clean.{name} must be a number or a mapping role -> number "
                          f"(e.g. {{user: 2048}}), got {value!r}")
    if isinstance(value, int):
        return dict.fromkeys(roles, value)
    unknown = set(value) - set(roles)
    if unknown:
        raise ConfigError(f"clean.{name}: roles {sorted(unknown)} are not cleaned; "
                          f"cleaned roles are {list(roles)}")
    for role, n in value.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"clean.{name}.{role} must be a non-negative integer, got {n!r}")
    return dict(value)


@dataclass
class CleanOptions(StageOptions):
    """The :class:`~dataprep.text.NormalizeOptions` switches, the roles and meta fields cleaned,
    ``tool_observation`` and the length limits (see the module docstring)."""

    roles: list[str] | tuple[str, ...] = TEXT_ROLES
    meta_fields: list[str] | tuple[str, ...] | None = None
    tool_observation: bool = False
    html: bool = True
    control: bool = True
    zero_width: bool = True
    literal_newlines: str = "auto"
    nfc: bool = True
    t2s: bool = False
    fullwidth: bool = True
    cjk_punct: bool = True
    whitespace: bool = True
    min_chars: Limit = None
    max_chars: Limit = None
    min_tokens: Limit = None
    max_tokens: Limit = None


class Clean(Stage):
    """Options: the :class:`~dataprep.text.NormalizeOptions` switches (``html``, ``control``,
    ``zero_width``, ``literal_newlines``, ``nfc``, ``t2s``, ``fullwidth``, ``cjk_punct``,
    ``whitespace``), ``roles``, ``meta_fields``, ``tool_observation`` and the length limits
    ``min_chars``, ``max_chars``, ``min_tokens``, ``max_tokens`` (see the module docstring)."""

    name = "clean"

    Options = CleanOptions
    uses = ("tokenizer",)
    options: CleanOptions

    def setup(self) -> None:
        o = self.options
        self.roles = tuple(o.roles)
        bad = [r for r in self.roles if r not in TEXT_ROLES]
        if bad:
            raise ConfigError(f"clean.roles: {bad} have no text content; choose from "
                              f"{list(TEXT_ROLES)} (tool calls are never rewritten)")
        if o.literal_newlines not in ("auto", "always", "never"):
            raise ConfigError("clean.literal_newlines must be auto, always or never, "
                              f"got {o.literal_newlines!r}")
        # Default: the text-bearing meta keys every corpus package declares.
        self.meta_fields = tuple(o.meta_fields) if o.meta_fields is not None else meta_fields()
        self.tool_observation = bool(o.tool_observation)
        self.normalize = NormalizeOptions(
            html=o.html, control=o.control, zero_width=o.zero_width,
            literal_newlines=o.literal_newlines,  # type: ignore[arg-type]
            nfc=o.nfc, t2s=o.t2s, fullwidth=o.fullwidth, cjk_punct=o.cjk_punct,
            whitespace=o.whitespace)
        self.min_chars = _per_role("min_chars", o.min_chars, self.roles)
        self.max_chars = _per_role("max_chars", o.max_chars, self.roles)
        self.min_tokens = _per_role("min_tokens", o.min_tokens, self.roles)
        self.max_tokens = _per_role("max_tokens", o.max_tokens, self.roles)
        for role in self.roles:
            for lo, hi, unit in ((self.min_chars, self.max_chars, "chars"),
                                 (self.min_tokens, self.max_tokens, "tokens")):
                if role in lo and role in hi and lo[role] > hi[role]:
                    raise ConfigError(f"clean: min_{unit} {lo[role]} > max_{unit} {hi[role]} "
                                      f"for {role} messages")

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(roles=list(self.roles), meta_fields=list(self.meta_fields),
                 min_chars=self.min_chars, max_chars=self.max_chars, min_tokens=self.min_tokens,
                 max_tokens=self.max_tokens, normalize=self.normalize.as_dict())
        return d

    # -- per record ---------------------------------------------------------------------------
    def process(self, rec: Conversation, ctx: RunContext) -> Iterator[Conversation]:
        stats = self.stats
        for key in ("records", "records_changed"):
            stats.setdefault(key, 0)
        stats.setdefault("changes", {})
        stats.setdefault("records_by_change", {})
        stats["records"] += 1
        changes: Counter[str] = Counter()
        # Work on new values first, so a rejected record is kept as evidence exactly as it came.
        new_content: dict[int, str] = {}
        new_observation: dict[int, Any] = {}
        for i, msg in enumerate(rec.messages):
            if msg.role == "tool":
                if self.tool_observation and isinstance(msg.observation, (str, list, dict)):
                    new_observation[i], ch = normalize_value(msg.observation, self.normalize)
                    changes.update(ch)
                continue
            if msg.role not in self.roles or msg.content is None:
                continue
            if not msg.content.strip():
                ctx.reject_record(rec, "empty_field",
                                  f"/conversations/{i}/content: {msg.role} text is empty",
                                  stage=self.name)
                return
            new, ch = normalize(msg.content, self.normalize)
            if not new:
                ctx.reject_record(rec, "empty_after_clean",
                                  f"/conversations/{i}/content: {msg.role} text is empty after "
                                  f"cleaning ({', '.join(sorted(ch))}); was {msg.content[:40]!r}",
                                  stage=self.name)
                return
            new_content[i] = new
            changes.update(ch)
        for i, text in new_content.items():
            rec.messages[i].content = text
        for i, obs in new_observation.items():
            rec.messages[i].observation = obs
        for key in self.meta_fields:
            if key in rec.meta:
                # Same rules as the messages, not counted again: it is the same text.
                rec.meta[key], _ = normalize_value(rec.meta[key], self.normalize)
        if changes:
            stats["records_changed"] += 1
            for kind in CHANGE_KINDS:
                if changes[kind]:
                    stats["changes"][kind] = stats["changes"].get(kind, 0) + changes[kind]
                    stats["records_by_change"][kind] = stats["records_by_change"].get(kind, 0) + 1
                    rec.lineage.ops.append(f"clean:{kind}")
        verdict = self._check_lengths(rec)
        if verdict is not None:
            reason, message = verdict
            ctx.remove(rec, reason, message, stage=self.name)
            return
        yield rec

    # -- lengths ------------------------------------------------------------------------------
    def _length_unit(self) -> str | None:
        """``"tokens"`` when token limits are set and a tokenizer is configured, else
        ``"chars"`` when char limits are set; None when there are no limits."""
        if self.min_tokens or self.max_tokens:
            if self.resources.tokenizer_path:
                return "tokens"
            if not (self.min_chars or self.max_chars):
                raise ConfigError("clean.min_tokens/max_tokens count ChatGLM3 tokens: set "
                                  "'tokenizer: PATH' in the config, or give min_chars/max_chars "
                                  "for runs without a tokenizer")
        return "chars" if (self.min_chars or self.max_chars) else None

    def _check_lengths(self, rec: Conversation) -> tuple[str, str] | None:
        unit = self._length_unit()
        self.stats["length_unit"] = unit
        if unit is None:
            return None
        lo, hi = ((self.min_tokens, self.max_tokens) if unit == "tokens"
                  else (self.min_chars, self.max_chars))
        for i, msg in enumerate(rec.messages):
            if msg.role not in self.roles or msg.content is None:
                continue
            if msg.role not in lo and msg.role not in hi:
                continue
            n = len(self.resources.tokenizer.encode(msg.content)) if unit == "tokens" else len(msg.content)
            if msg.role in lo and n < lo[msg.role]:
                return ("too_short", f"/conversations/{i}/content: {msg.role} text is {n} "
                        f"{unit}, under min_{unit} {lo[msg.role]}")
            if msg.role in hi and n > hi[msg.role]:
                return ("too_long", f"/conversations/{i}/content: {msg.role} text is {n:,} "
                        f"{unit}, over max_{unit} {hi[msg.role]:,}")
        return None
