#!/usr/bin/env bash
# The stimulus jobs through Snakemake, as a user runs them (issue 12's workflow-level targets):
# 5,120 Imagenette-like JPEGs (bench/imagenette_like.py), a random-init 10-class ResNet-50 given
# as guide.checkpoint (no training), then natural_stimuli and enhance at eps 1, 4 and 20, named
# as targets. Prints each rule's seconds from Snakemake's benchmark files.
# Usage: bash bench/workflow_timing.sh OUT_DIR   (TRAIN, VAL, EPSILONS, CORES, LIMIT override)
set -euo pipefail
out="${1:?output folder}"
work="${WORK:-/tmp/lwise-workflow-timing}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
cores="${CORES:-$(nproc)}"
mkdir -p "$work" "$out"
if [ -n "${PYTHONDONTWRITEBYTECODE:-}" ]; then
  echo "note: PYTHONDONTWRITEBYTECODE is set: every job compiles torch's bytecode while importing"
fi
python3 "$repo/bench/imagenette_like.py" "$work/images" --workers "$cores" \
  --train "${TRAIN:-4000}" --val "${VAL:-1120}"
python3 "$repo/bench/random_guide.py" "$work/guide.pt"
cat > "$work/timing.yaml" <<YAML
datasets:
  bench:
    sources: [{url: $work/images}]
    definer: {type: imagefolder, options: {root: images}}
    build: {resize: crop, size: 224, format: jpeg, jpeg_quality: 95}
guide: {checkpoint: $work/guide.pt}
enhance: {epsilons: ${EPSILONS:-[1, 4, 20]}}
experiments: {enabled: false}
correspondence: {datasets: []}
visalign: {datasets: []}
YAML
targets="results/bench/stimuli/natural"
for eps in $(python3 -c "import sys, yaml; print(' '.join(map(str, yaml.safe_load(sys.argv[1]))))" "${EPSILONS:-[1, 4, 20]}"); do
  targets="$targets results/bench/stimuli/logit_eps$eps"
done
cd "$work"
start=$(date +%s)
set +e
timeout "${LIMIT:-500}" python3 -m snakemake --snakefile "$repo/Snakefile" --cores "$cores" \
  --resources gpu=1 --configfile "$work/timing.yaml" --workflow-profile "$repo/profiles/local" \
  $targets > "$out/snakemake.log" 2> "$out/snakemake.err"
rc=$?
set -e
echo "snakemake: rc $rc, $(( $(date +%s) - start )) s in all"
tail -n 15 "$out/snakemake.err"
for f in $(ls -tr results/benchmarks/bench/*.tsv); do
  printf '%-28s %s\n' "$(basename "$f" .tsv)" "$(tail -n 1 "$f" | cut -f1)"
done | tee "$out/stage_seconds.txt"
grep -h "eager\|compile\|img/s]" results/logs/bench/enhance_*.log | tail -n 6 || true
exit $rc
