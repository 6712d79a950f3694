"""Attention alignment (GRADIA; Gao et al., CSCW 2022): human attention masks against the guide
model's Grad-CAM, and reasonability-weighted attention fine-tuning.

`masks` reads and checks the human input (mask images or GRADIA's JSON lists, reasonability
tables, assessments) and makes synthetic masks for datasets without human ones; `run` holds
fine-tuning (`finetune`), `evaluate` the evaluation (`evaluate`, `reasonability_matrix`). The
model side (Grad-CAM, the attention loss, the two training phases) is `lwise.guide.attention`.
"""

# Nothing is imported here: the workflow's rules import `lwise.alignment.attention.workflow` at
# every parse, and the stage's modules load torch and torchvision (7 s of a 12 s dry run).
# Import from the modules themselves.
