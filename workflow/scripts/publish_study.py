from lwise.core.jobs import rule_job
from lwise.publish.s3 import UploadConfig
from lwise.publish.s3local import session_for
from lwise.publish.site import publish_site

with rule_job(snakemake):
    publish_site(
        snakemake.input[0],
        UploadConfig.from_config(
            snakemake.params.upload,
            endpoint_url=snakemake.params.endpoint,
            fields={"dataset": snakemake.wildcards.dataset, "set": snakemake.params.name},
        ),
        snakemake.output.csv,
        snakemake.output.json,
        session=session_for(snakemake.params.upload["endpoint_url"]),
    )
