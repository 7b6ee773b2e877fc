"""chatglm-dataprep: raw Chinese corpora to ChatGLM3 fine-tuning data."""

__version__ = "0.1.0"
