"""Thin QLoRA trainer for the ChatGLM3 JSONL that dataprep writes."""

__version__ = "0.1.0"
