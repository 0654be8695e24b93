"""One module per pipeline stage: load -> compute -> save -> figures -> metrics; notebooks call these."""
