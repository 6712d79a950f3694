"""Correspondence-based classifiers that explain, then predict (Nguyen, Taesiri & Nguyen, NeurIPS
2022, "Visual correspondence-based explanations improve AI robustness and human-AI team
accuracy"): a kNN shortlist over pooled backbone features, re-ranked by patch correspondences
(EMD-Corr: optimal transport between patch sets; CHM-Corr: a dense matcher's grid transfer),
visual explanations, and human-AI team trials.

Modules: `features` (backbone maps and the per-dataset feature cache), `knn` (shortlist and
votes), `emd` (patch weights, transport solvers, EMD-Corr scores), `chm` (matchers and CHM-Corr
scores), `classify` (the per-dataset evaluation), `explain` (figures), `teams` (trial tables and
their metrics), `workflow` (what rules/correspondence.smk asks of the config).
"""
