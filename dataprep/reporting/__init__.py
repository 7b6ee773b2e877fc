"""What a person reads after a run: charts, the record browser, the Data Docs' offline rewrite."""
