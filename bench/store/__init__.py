"""Where results live: the database (runs, per-sample rows, stages, checks), the workspace folders,
and the run summary computed from the stored rows alone."""
