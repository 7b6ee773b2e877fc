"""Augmentation building blocks used by the ``augment`` stage (:mod:`dataprep.stages.augment`).

- :mod:`~dataprep.augment.phrases`: the phrase table we write (colloquial synonyms, rewrite
  rules, templates for added hotel turns);
- :mod:`~dataprep.augment.slots`: slot extraction from a user turn and the slot-preservation
  check every rewrite must pass;
- :mod:`~dataprep.augment.rewrite`: offline rule rewrites and the LLM rewrite prompt;
- :mod:`~dataprep.augment.hotel_ops`: follow-ups, closings, name and price-upper-bound queries;
- :mod:`~dataprep.augment.docqa_ops`: contrastive and unanswerable doc-QA samples.

Each op takes one record and returns a derived record (or None and a reason); none modifies its
input. The stage decides which records an op runs on and keeps the books.

>>> from dataprep.augment import SlotExtractor
>>> SlotExtractor().check("找一家有国际长途电话的酒店", "找一家能打国际长途的酒店")
[]
"""

from dataprep.augment.rewrite import RuleRewriter, judge_rewrite, user_turns
from dataprep.augment.slots import SlotExtractor, Slots

__all__ = ["RuleRewriter", "SlotExtractor", "Slots", "judge_rewrite", "user_turns"]
