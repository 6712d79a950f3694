import sys

# The library is imported from this checkout, whichever Python runs Snakemake.
sys.path.insert(0, workflow.basedir)
from lwise.core.config import check_yaml_file

# Snakemake's own message for a broken config file names no line.
check_yaml_file("config.yaml")


configfile: "config.yaml"
