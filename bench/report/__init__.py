"""What a run says: its summary joined with its checks (flags, ranked accuracy), the typed
report the Python API returns, and the exports (RobustBench-style JSON, per-sample CSV)."""
