from lwise.publish.s3local import LocalServer

# A "local" endpoint is a moto_server that lives for this run (started here, stopped below).
LOCAL_S3 = LocalServer(config["upload"].get("local_port", 9900))


onstart:
    if config["upload"]["endpoint_url"] == "local":
        LOCAL_S3.start()


onsuccess:
    LOCAL_S3.stop()


onerror:
    LOCAL_S3.stop()


rule upload:
    """Upload one image set to S3; write its dirmap with a `url` column (CSV and JSON)."""
    input:
        "results/{dataset}/stimuli/{set}",
    output:
        csv="results/{dataset}/upload/{set}/dirmap.csv",
        json="results/{dataset}/upload/{set}/dirmap.json",
    log:
        "results/logs/{dataset}/upload_{set}.log",
    benchmark:
        "results/benchmarks/{dataset}/upload_{set}.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 2
    resources:
        s3_uploads=1,
        mem_mb=2000,
        runtime=240,
    params:
        upload=config["upload"],
        endpoint=upload_endpoint(),
    script:
        "../workflow/scripts/upload.py"
