#!/usr/bin/env bash
# Time the workflow's main stages on one GPU at Imagenette's size (README: "Imagenette on one
# GPU"). No dataset can be downloaded on the GPU machines, so an ImageFolder of Imagenette's
# size and image sizes is generated (bench/imagenette_like.py) and configs/imagenette.yaml's
# source is pointed at it. Training runs EPOCHS epochs (the config's 16 would not fit one
# command) and enhancement the eps in EPSILONS; the README extrapolates from the per-epoch and
# per-step times printed here. Usage: bash bench/imagenette_timing.sh OUT_DIR
set -euo pipefail
out="${1:?output folder}"
work="${WORK:-/tmp/lwise-imagenette}"
epochs="${EPOCHS:-1}"
epsilons="${EPSILONS:-[20]}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$work" "$out"
start=$(date +%s)
python3 "$repo/bench/imagenette_like.py" "$work/imagenette2-320" --workers "$(nproc)"
echo "generated in $(( $(date +%s) - start )) s"
cat > "$work/timing.yaml" <<YAML
datasets:
  imagenette:
    sources: [{url: $work/imagenette2-320}]
    definer: {type: imagefolder, options: {root: imagenette2-320}}
    build: {resize: crop, size: 224, format: jpeg, jpeg_quality: 95}
guide: {train: {epochs: $epochs, eval_every: $epochs}}
enhance: {epsilons: $epsilons}
experiments: {enabled: false}
correspondence: {datasets: []}
visalign: {datasets: []}
YAML
cd "$work"
set +e
timeout "${LIMIT:-500}" python3 -m snakemake --snakefile "$repo/Snakefile" --cores "$(nproc)" \
  --resources gpu=1 --configfile "$repo/configs/imagenette.yaml" "$work/timing.yaml" \
  --replace-workflow-config --workflow-profile "$repo/profiles/local" \
  > "$out/snakemake.log" 2> "$out/snakemake.err"
rc=$?
set -e
tail -n 25 "$out/snakemake.err"
echo "rule seconds (snakemake benchmark files)"
for f in $(ls -tr results/benchmarks/imagenette/*.tsv); do
  printf '%-36s %s\n' "$(basename "$f" .tsv)" "$(tail -n 1 "$f" | cut -f1)"
done | tee "$out/stage_seconds.txt"
grep -h "INFO" results/logs/imagenette/train_guide.log | tail -n 4 || true
for log in results/logs/imagenette/*.log; do
  echo "== $log"; grep -v "it/s\|img/s\|B/s" "$log" | tail -n 3
done > "$out/logs_tail.txt" 2>&1 || true
cp results/imagenette/guide/metrics.csv "$out/" 2>/dev/null || true
exit $rc
