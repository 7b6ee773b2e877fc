"""Hotel tool dialogs: CrossWOZ and the fine-tuning-lab files, with ``search_hotels`` calls.

- :mod:`~dataprep.corpora.hotel.hotel_db`: the hotel database (search, constraint checks,
  scenario labels); :mod:`~dataprep.corpora.hotel.tools`: the ``search_hotels`` schema;
- :mod:`~dataprep.corpora.hotel.crosswoz`, :mod:`~dataprep.corpora.hotel.lab`: the readers;
- :mod:`~dataprep.corpora.hotel.rules`: ``observation_violates_call``,
  ``reply_mentions_no_result``;
- :mod:`~dataprep.corpora.hotel.phrases` (the phrase table we write),
  :mod:`~dataprep.corpora.hotel.slots` (slot extraction and the slot-preservation check),
  :mod:`~dataprep.corpora.hotel.rewrite` (rule and LLM rewrites),
  :mod:`~dataprep.corpora.hotel.ops` (follow-ups, closings, name and price queries) and
  :mod:`~dataprep.corpora.hotel.augment` (the augment op objects);
- the ``scenario`` balance label.
"""

from dataprep.corpora.base import Corpus

CORPUS = Corpus(
    name="hotel",
    readers={
        "crosswoz": "dataprep.corpora.hotel.crosswoz:CrossWOZReader",
        "lab_dialog": "dataprep.corpora.hotel.lab:LabDialogReader",
        "lab_chatglm3": "dataprep.corpora.hotel.lab:LabChatGLM3Reader",
    },
    rules=("dataprep.corpora.hotel.rules:ObservationViolatesCall",
           "dataprep.corpora.hotel.rules:UnknownFacility",
           "dataprep.corpora.hotel.rules:ReplyMentionsNoResult"),
    ops={
        "rewrite_rules": "dataprep.corpora.hotel.augment:RewriteRules",
        "rewrite_llm": "dataprep.corpora.hotel.augment:RewriteLLM",
        "followup": "dataprep.corpora.hotel.augment:Followup",
        "closing": "dataprep.corpora.hotel.augment:Closing",
        "name_query": "dataprep.corpora.hotel.augment:NameQuery",
        "price_upper_query": "dataprep.corpora.hotel.augment:PriceUpperQuery",
    },
    labels={"scenario": "dataprep.corpora.hotel.labels:scenario"},
    tool_call_rate=(0.5, 1.0),
)
