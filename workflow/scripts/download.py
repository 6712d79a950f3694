from lwise.core.logs import script_logging
from lwise.data.download import DownloadConfig, download_dataset

with script_logging(snakemake.log[0]):
    download_dataset(
        snakemake.params.sources,
        snakemake.output[0],
        snakemake.params.downloads,
        DownloadConfig.from_config(snakemake.params.fetch),
    )
