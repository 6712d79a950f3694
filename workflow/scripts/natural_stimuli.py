from lwise.core.logs import script_logging
from lwise.guide.checkpoints import load_model
from lwise.guide.score import model_input_size
from lwise.stimuli.enhance import write_natural

with script_logging(snakemake.log[0]):
    cfg = snakemake.params.enhance
    write_natural(
        snakemake.input.dirmap,
        snakemake.output[0],
        key_root=snakemake.input.images,
        image_size=model_input_size(
            load_model(snakemake.input.model, trusted=snakemake.params.trusted)
        ),
        fmt=cfg["format"],
        jpeg_quality=cfg["jpeg_quality"],
        workers=snakemake.threads,
    )
