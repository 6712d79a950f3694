from lwise.core.jobs import rule_job
from lwise.data.download import DownloadConfig, download_dataset

with rule_job(snakemake):
    download_dataset(
        snakemake.params.sources,
        snakemake.output[0],
        snakemake.params.downloads,
        DownloadConfig.from_config(snakemake.params.fetch),
    )
