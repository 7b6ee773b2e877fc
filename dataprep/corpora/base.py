"""What a corpus package contributes, and the small base classes it builds them from.

A corpus package (``dataprep/corpora/NAME/``) defines one :class:`Corpus` in its ``__init__``:
its readers, its validate rules (:class:`Rule`: one reason code each), its augment ops
(:class:`AugmentOp`: an ``Options`` dataclass each), its balance labels and its expectations.
Entries are import strings, so a run imports only what its config uses.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from dataprep.errors import ConfigError
from dataprep.record import Conversation

if TYPE_CHECKING:
    from dataprep.resources import Resources


@dataclass(frozen=True)
class Corpus:
    """One corpus: what the generic stages need to know about it, and nothing more.

    ``readers``: reader name -> "module:Class"; ``rules``: "module:Class" of its :class:`Rule`s,
    in the order they are checked; ``ops``: op name -> "module:Class" of its :class:`AugmentOp`s;
    ``labels``: balance label name -> "module:function" (record -> class name);
    ``tool_call_rate``: the share of samples with a tool call its expectations suite demands;
    ``meta_fields``: the ``meta`` keys holding text that ``clean`` normalises with the messages.
    """

    name: str
    readers: dict[str, str] = field(default_factory=dict)
    rules: tuple[str, ...] = ()
    ops: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    tool_call_rate: tuple[float, float] = (0.0, 0.0)
    meta_fields: tuple[str, ...] = ()


# -- validate rules ----------------------------------------------------------------------------
@dataclass
class Problem:
    """A failed rule: its reason code, a message naming where, and a position (record order:
    problems of one record are reported in the order of where they are)."""

    reason: str
    message: str
    position: tuple[int, ...] = ()


class NotApplicable:
    """A rule's answer when a record has nothing it could check (not counted as checked)."""


NOT_APPLICABLE = NotApplicable()


@dataclass
class RuleOptions:
    """Base of a rule's options (given flat to the ``validate`` stage)."""


class Rule:
    """One validate rule of one corpus, with one reason code.

    ``check`` returns None (passed), a :class:`Problem` (failed) or :data:`NOT_APPLICABLE`.
    ``detail`` is the rule's own section of the validate stats (``stats_key``), for rates that
    say more than checked/failed.
    """

    reason: ClassVar[str]
    corpus: ClassVar[str]
    default_mode: ClassVar[str] = "reject"
    Options: ClassVar[type[RuleOptions]] = RuleOptions
    stats_key: ClassVar[str | None] = None
    #: True for a rule that judges a record against hotel_db (or another resource of ours) rather
    #: than against the tool the record declares: for a record that brings its own tool
    #: (``lineage.extra["tool_origin"] == "dataset"``) its ``reject`` becomes the validate stage's
    #: ``dataset_tools`` mode (default ``flag``).
    semantic: ClassVar[bool] = False
    #: True for a rule that offers the mode ``repair`` (it then implements :meth:`repair`).
    repairable: ClassVar[bool] = False

    def __init__(self, options: RuleOptions, resources: Resources) -> None:
        self.options = options
        self.resources = resources

    def new_detail(self) -> dict[str, Any]:
        return {}

    def check(self, rec: Conversation, detail: dict[str, Any]) -> Problem | NotApplicable | None:
        raise NotImplementedError

    def repair(self, rec: Conversation) -> str | None:
        """Fix the record in place; None when it was repaired, else why it cannot be."""
        raise NotImplementedError


# -- augment ops -------------------------------------------------------------------------------
@dataclass
class OpOptions:
    """Base of an op's options: ``share``, the fraction of applicable records it runs on."""

    share: float = 0.5

    def __post_init__(self) -> None:
        share = self.share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise ConfigError(f"share must be a number between 0 and 1, got {share!r}")

    def positive_ints(self, *names: str) -> None:
        for key in names:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")


@dataclass
class OpRun:
    """What an op gets from the augment stage besides a record: the seed, the run's resources,
    the run folder, and where per-turn outcomes, discarded evidence and artifacts go."""

    seed: int
    resources: Resources
    out_dir: Path
    count_turn: Callable[[str, str], None]
    discard: Callable[[dict[str, Any]], None]
    artifacts: dict[str, Any]
    state_dir: Path | None = None
    """Where state that outlives one run's outputs lives (the LLM cache): the --out folder."""


class AugmentOp:
    """One augment op of one corpus. Override :meth:`derive` (one record -> a derived record or
    None, and an outcome such as ``skipped:no_recommendation``), or :meth:`derive_many` for ops
    that batch (LLM requests). Ops never modify their input."""

    name: ClassVar[str]
    corpus: ClassVar[str]
    Options: ClassVar[type[OpOptions]] = OpOptions

    def __init__(self, options: OpOptions) -> None:
        self.options = options

    def prepare(self, scope: list[Conversation], run: OpRun) -> None:
        """Called once with every in-scope record before any :meth:`derive`."""

    def shardable(self, run: OpRun) -> bool:
        """True when :meth:`derive_many` may run on slices of the chosen records in other
        processes with the same result (the Ray engine's actor pool): it reads only the records,
        its options, ``run.seed`` and ``run.resources``, and its outcomes, evidence and
        artifacts go through ``run``. Worth it for ops that wait on an endpoint."""
        return False

    def derive(self, rec: Conversation, rng: random.Random,
               run: OpRun) -> tuple[Conversation | None, str]:
        raise NotImplementedError

    def derive_many(self, chosen: list[Conversation], run: OpRun,
                    rng: Callable[[Conversation], random.Random],
                    ) -> list[tuple[Conversation, Conversation | None, str]]:
        """(parent, child or None, outcome) for every chosen record, in order."""
        return [(rec, *self.derive(rec, rng(rec), run)) for rec in chosen]
