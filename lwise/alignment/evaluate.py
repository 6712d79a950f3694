"""Stage 7: model-human alignment of the guide model and the effect of its enhanced stimuli.

`evaluate_alignment` (the rule `evaluate_alignment`) reads and cross-checks its inputs
(`lwise.alignment.inputs`), runs the analyses that `evaluation.analyses` names from the registry
(`lwise.alignment.analysis.ANALYSES`), and writes their tables, figures and one summary.csv:
- `difficulty` (`lwise.alignment.difficulty`): does the guide model's ground-truth logit predict
  whether a person answers a natural image correctly, better than a non-robust model's logit;
- `enhancement` (`lwise.alignment.enhancement`): human accuracy per stimulus set;
- `consistency` (`lwise.alignment.consistency`): model-vs-human error consistency;
- `visalign` (`lwise.alignment.visalign`): Hellinger distance to the human response
  distribution and reliability scores, with the abstention method `evaluation.abstention`
  (any but the Deep Ensemble, which needs several models; all but msp run the guide model).

Without human data the trials come from simulated observers (`lwise.humans.simulate`); every
output then says so (`synthetic` column, plot titles).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import pandas as pd

# The analysis modules register themselves on import.
from lwise.alignment import consistency, difficulty, enhancement, visalign  # noqa: F401
from lwise.alignment.analysis import ANALYSES, AlignmentContext, EvaluationConfig
from lwise.alignment.inputs import read_inputs
from lwise.alignment.plots import SYNTHETIC_NOTE, save
from lwise.alignment.summary import summary_table
from lwise.core.atomic import atomic_path, write_csv
from lwise.core.logs import progress

__all__ = ["EvaluationConfig", "evaluate_alignment"]

log = logging.getLogger(__name__)


def evaluate_alignment(
    natural_dirmap_csv: str | os.PathLike,
    set_dirmaps: Mapping[str, str | os.PathLike],
    trials_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: EvaluationConfig,
    *,
    logit_column: str,
    key_root: str | os.PathLike | None = None,
    vanilla_dirmap_csv: str | os.PathLike | None = None,
    vanilla_logit_column: str | None = None,
    probabilities_csv: str | os.PathLike | None = None,
    label_distributions_csv: str | os.PathLike | None = None,
    synthetic: bool | None = None,
    guide_model: str | os.PathLike | None = None,
    guide_trusted: bool = False,
    train_dirmap_csv: str | os.PathLike | None = None,
    abstention_settings: Mapping[str, Any] | None = None,
    workers: int = 0,
) -> dict[str, pd.DataFrame]:
    """Run the configured analyses; write tables and plots into `out_dir` (replaced atomically).

    Inputs: the natural stimulus set's dirmap (im_path = key; `logit_column`, `correct`, `class`,
    `split` per image), the other sets' dirmaps by name (`natural` may be included or not), and a
    trials CSV (`lwise.humans.trials` schema; `condition` = set name, `image` = key). Optional: a
    non-robust model's scored dirmap (logit column `vanilla_logit_column`, default
    `vanilla_gt_logit` else `robust_gt_logit`), the model's `probabilities_csv` (im_path + one
    softmax column per class; needed for VisAlign) and per-image human label distributions
    (default: built from the natural trials). Scored dirmaps and probabilities are matched to keys
    through `key_root` (see `lwise.alignment.inputs`). `synthetic` defaults to the trials' own
    `synthetic` marking.

    An `evaluation.abstention` method other than msp runs the guide model: `guide_model` (the
    file the scoring stage loaded; `guide_trusted` allows full unpickling), `train_dirmap_csv`
    (the ImageFolder's dirmap: its `train` rows fit the distance methods, its rows of the
    natural images are what the model scores), `abstention_settings` (keys of the `visalign`
    section: odin, mds, knn, tapudd, mcdropout, batch_size; the schema's defaults fill the
    rest) and `workers` (image-loading processes).

    Writes each analysis's tables and figures (all four: difficulty_prediction.csv,
    enhancement_effect.csv, consistency.csv, difficulty_curve.png, enhancement_effect.png,
    consistency.png, and with probabilities visalign.csv and visalign_images.csv; without them
    VisAlign is skipped, with a log line) and summary.csv. Returns the tables by file stem.
    """
    unknown = [name for name in config.analyses if name not in ANALYSES]
    if unknown:
        raise ValueError(f"unknown analysis name(s) {unknown}; known: {sorted(ANALYSES)}")
    inputs = read_inputs(
        natural_dirmap_csv,
        set_dirmaps,
        trials_csv,
        logit_column=logit_column,
        key_root=key_root,
        vanilla_dirmap_csv=vanilla_dirmap_csv,
        vanilla_logit_column=vanilla_logit_column,
        probabilities_csv=probabilities_csv,
        label_distributions_csv=label_distributions_csv,
        synthetic=synthetic,
        guide_model=guide_model if config.needs_model else None,
        guide_trusted=guide_trusted,
        train_dirmap_csv=train_dirmap_csv,
    )
    tables: dict[str, pd.DataFrame] = {}
    rows = []
    with atomic_path(out_dir, directory=True) as tmp:
        context = AlignmentContext(
            inputs=inputs, config=config, out_dir=tmp,
            abstention_settings=dict(abstention_settings or {}), workers=workers,
        )  # fmt: skip
        with progress(total=len(config.analyses) + 1, desc="alignment") as bar:
            for name in config.analyses:
                bar.set_postfix_str(name)
                result = ANALYSES[name](context)
                for stem, fig in result.figures.items():
                    save(fig, tmp / f"{stem}.png")
                tables.update(result.tables)
                rows += result.summary
                bar.update()
            bar.set_postfix_str("summary")
            # The summary is built from the tables as the analyses return them, without the
            # `synthetic` column every other table then gets.
            tables["summary"] = summary_table(rows, synthetic=inputs.synthetic)
            for stem, table in tables.items():
                if stem != "summary":
                    table["synthetic"] = inputs.synthetic
                write_csv(table, tmp / f"{stem}.csv")
            bar.update()
    log.info(
        "alignment%s: %s written to %s",
        " " + SYNTHETIC_NOTE if inputs.synthetic else "",
        ", ".join(config.analyses),
        out_dir,
    )
    return tables
