from pathlib import Path

from lwise.core.logs import script_logging
from lwise.publish.s3 import UploadConfig, upload_image_set
from lwise.publish.s3local import session_for

with script_logging(snakemake.log[0]):
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
