"""Data debugging: find where the guide model fails, choose debug sets from a pool of extra
labelled images by similarity, uncertainty, difficulty (or take a generator's images), fine-tune
with each over seeds, and compare (AACA's data-debugging baselines and L-WISE's difficulty).

- `data`: the training and evaluation rows, and the pool (a dirmap, or held out of a split).
- `signals`: predictions, ground-truth logits, entropies and embeddings of the model.
- `slices`: failure slices (per class and per named dirmap column) and accuracy on slices.
- `selection`: the selection methods, registered by name (`METHODS`, `register_method`).
- `failures`, `retrain`, `compare`: the stage's three steps; `figures`: the grid and the plot.
- `settings`: `DebuggingConfig`, the `debugging` config section.
- `workflow`: what rules/debugging.smk reads from the config (standard library only, so this
  package imports nothing on its own).
"""
