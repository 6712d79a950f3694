from lwise.download import download_dataset
from lwise.logs import script_logging

with script_logging(snakemake.log[0]):
    download_dataset(
        snakemake.params.sources,
        snakemake.output[0],
        snakemake.params.downloads,
        **snakemake.params.fetch,
    )
