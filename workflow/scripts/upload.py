from pathlib import Path

import boto3

from lwise.core.logs import script_logging
from lwise.publish.s3 import UploadConfig, upload_image_set
from lwise.publish.s3local import LOCAL_CREDENTIALS

with script_logging(snakemake.log[0]):
    cfg = dict(snakemake.params.upload)
    local = cfg.pop("endpoint_url") == "local"
    cfg.pop("local_port", None)
    image_set = snakemake.input[0]
    upload_image_set(
        Path(image_set) / "dirmap.csv",
        image_set,
        UploadConfig(
            endpoint_url=snakemake.params.endpoint,
            fields={"dataset": snakemake.wildcards.dataset, "set": snakemake.wildcards.set},
            **cfg,
        ),
        snakemake.output.csv,
        snakemake.output.json,
        # moto accepts any keys; real endpoints use the standard AWS credential chain.
        session=boto3.Session(**LOCAL_CREDENTIALS) if local else None,
    )
