"""How work runs: the plan (train, evaluate chunk slices, check) as a dependency graph, run
in-process or on a process pool by the same task code."""
