"""Test helpers shared by tests and benches; not part of the installed package."""
