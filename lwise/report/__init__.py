"""The HTML report's own figures and tables (`rules/report.smk`): the per-epsilon stimulus
summary, the alignment summary as a table, the difficulty histograms and the training curves.

Snakemake's report shows a CSV as plain text, so the tables are written as small
self-contained HTML pages (`lwise.report.html`), which it shows as they are. The contact sheet
is `lwise.stimuli.contact_sheet`.
"""
