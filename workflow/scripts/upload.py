from pathlib import Path

from lwise.core.jobs import rule_job
from lwise.publish.s3 import UploadConfig, upload_image_set
from lwise.publish.s3local import session_for

with rule_job(snakemake):
    image_set = snakemake.input[0]
    upload_image_set(
        Path(image_set) / "dirmap.csv",
        image_set,
        UploadConfig.from_config(
            snakemake.params.upload,
            endpoint_url=snakemake.params.endpoint,
            fields={"dataset": snakemake.wildcards.dataset, "set": snakemake.wildcards.set},
        ),
        snakemake.output.csv,
        snakemake.output.json,
        session=session_for(snakemake.params.upload["endpoint_url"]),
    )
