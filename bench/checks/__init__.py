"""The trust layer: sanity checks of a stored run (rows plus probes on the model), each with a
severity, a threshold, a measured value and evidence."""
