"""What is evaluated and on which data: the versioned protocols (attacks, epsilons, samples,
seeds, fingerprint) and the datasets they read."""
