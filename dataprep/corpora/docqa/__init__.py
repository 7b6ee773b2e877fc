"""Document QA (RAG) samples from four layouts: multi-doc-qa (new and old), CMRC 2018, DuReader.

- :mod:`~dataprep.corpora.docqa.common`: the shared record shape, prompt and budgets
  (``RAG_PROMPT``, ``UNANSWERABLE_ANSWER``); :mod:`~dataprep.corpora.docqa.multidoc_qa`,
  :mod:`~dataprep.corpora.docqa.cmrc2018`, :mod:`~dataprep.corpora.docqa.dureader`: the readers;
- :mod:`~dataprep.corpora.docqa.rules`: ``answer_not_grounded``;
- :mod:`~dataprep.corpora.docqa.ops` / :mod:`~dataprep.corpora.docqa.augment`: contrastive and
  unanswerable samples;
- :mod:`~dataprep.corpora.docqa.labels`: ``answer_length`` and ``doc_length`` buckets.
"""

from dataprep.corpora.base import Corpus

CORPUS = Corpus(
    name="docqa",
    readers={
        "multidoc_qa": "dataprep.corpora.docqa.multidoc_qa:MultiDocQAReader",
        "cmrc2018": "dataprep.corpora.docqa.cmrc2018:Cmrc2018Reader",
        "dureader": "dataprep.corpora.docqa.dureader:DuReaderReader",
    },
    rules=("dataprep.corpora.docqa.rules:AnswerNotGrounded",),
    ops={
        "docqa_contrastive": "dataprep.corpora.docqa.augment:Contrastive",
        "docqa_unanswerable": "dataprep.corpora.docqa.augment:Unanswerable",
    },
    labels={
        "answer_length": "dataprep.corpora.docqa.labels:answer_length",
        "doc_length": "dataprep.corpora.docqa.labels:doc_length",
    },
    tool_call_rate=(0.0, 0.0),
    meta_fields=("question", "answer", "positive_docs", "negative_docs"),
)
