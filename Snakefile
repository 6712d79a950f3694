# lwise: download -> dirmap -> ImageFolder -> guide model -> difficulty -> enhancement -> upload
# -> alignment evaluation. Each stage lives in rules/<stage>.smk; shared helpers in common.smk.


include: "rules/config.smk"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/dirmap.smk"
include: "rules/imagefolder.smk"
include: "rules/train.smk"
include: "rules/score.smk"
include: "rules/enhance.smk"
include: "rules/upload.smk"
include: "rules/evaluate.smk"
include: "rules/experiments.smk"
include: "rules/correspondence.smk"
include: "rules/attention.smk"
include: "rules/report.smk"
include: "rules/visalign.smk"
include: "rules/debugging.smk"
include: "rules/export.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
