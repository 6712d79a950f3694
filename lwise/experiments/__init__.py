"""experiments: L-WISE learning studies (conditions, curricula, trial lists, the web page,
the learning analysis)."""
