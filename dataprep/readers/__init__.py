"""Readers: one module per input layout. Each yields, per input record, exactly one
:class:`~dataprep.record.Conversation` or one :class:`~dataprep.record.Reject`."""
