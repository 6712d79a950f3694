#!/usr/bin/env bash
# Issue 12's two-GPU targets, through Snakemake as a user runs them, on a machine with two GPUs:
# 1. two enhancement jobs of equal cost (eps 20 and 20.5, the same steps) with
#    --resources gpu=1 (one after the other) and gpu=2 (at once, one device each): images/s
#    from the wall time of each Snakemake call, and their ratio;
# 2. guide training with guide.gpus 1 and 2 (DistributedDataParallel): the warm second
#    epoch's seconds from metrics.csv (the last one also validates), and the ratio of epoch rates.
# Usage: bash bench/two_gpus.sh OUT_DIR   (TRAIN, VAL, STEPS, EPOCHS, LIMIT override; PARTS:
# "enhance training" by default)
set -euo pipefail
out="${1:?output folder}"
work="${WORK:-/tmp/lwise-two-gpus}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
cores="$(nproc)"
train="${TRAIN:-4000}"
val="${VAL:-1120}"
mkdir -p "$work" "$out"
python3 "$repo/bench/imagenette_like.py" "$work/images" --workers "$cores" \
  --train "$train" --val "$val"
python3 "$repo/bench/random_guide.py" "$work/guide.pt"
dataset="datasets: {bench: {sources: [{url: $work/images}],
  definer: {type: imagefolder, options: {root: images}},
  build: {resize: crop, size: 224, format: jpeg, jpeg_quality: 95}}}"
families="experiments: {enabled: false}
correspondence: {datasets: []}
visalign: {datasets: []}"
cat > "$work/enhance.yaml" <<YAML
$dataset
guide: {checkpoint: $work/guide.pt}
enhance: {epsilons: [20, 20.5], steps: ${STEPS:-40}}
$families
YAML
smk() {  # config, gpus, targets...
  local config="$1" gpus="$2"
  shift 2
  timeout "${LIMIT:-500}" python3 -m snakemake --snakefile "$repo/Snakefile" --cores "$cores" \
    --resources gpu="$gpus" --configfile "$config" --workflow-profile "$repo/profiles/local" \
    "$@" >> "$out/snakemake.log" 2>> "$out/snakemake.err"
}
parts="${PARTS:-enhance training}"
cd "$work"
sets="results/bench/stimuli/logit_eps20 results/bench/stimuli/logit_eps20.5"
if [[ " $parts " == *" enhance "* ]]; then
# Everything the two jobs read, built first so that only the jobs themselves are timed.
smk enhance.yaml 1 results/bench/stimuli/preprocessed.npy results/bench/difficulty/dirmap.csv
images=$(( $(wc -l < results/bench/stimuli/preprocessed.csv) - 1 ))
declare -A enhance_wall
for gpus in 1 2; do
  rm -rf $sets
  start=$(date +%s.%N)
  smk enhance.yaml "$gpus" $sets
  enhance_wall[$gpus]=$(python3 -c "import time; print(time.time() - $start)")
  for f in results/benchmarks/bench/enhance_logit_eps20*.tsv; do
    echo "gpu=$gpus $(basename "$f" .tsv): $(tail -n 1 "$f" | cut -f1) s"
  done | tee -a "$out/two_gpus.txt"
  grep -h "device\|cuda:" results/logs/bench/enhance_logit_eps20*.log | head -n 4 || true
done
python3 - "$images" "${enhance_wall[1]}" "${enhance_wall[2]}" <<'PY' | tee -a "$out/two_gpus.txt"
import sys
n, one, two = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f"two enhancement jobs of {n} images: gpu=1 {one:.1f} s ({2 * n / one:.1f} images/s), "
      f"gpu=2 {two:.1f} s ({2 * n / two:.1f} images/s); ratio {one / two:.2f}x")
PY
fi
[[ " $parts " == *" training "* ]] || exit 0
declare -A epoch
for gpus in 1 2; do
  cat > "$work/train$gpus.yaml" <<YAML
$dataset
guide: {gpus: $gpus, train: {epochs: ${EPOCHS:-3}, eval_every: ${EPOCHS:-3}}}
enhance: {epsilons: [20]}
$families
YAML
  rm -rf results/bench/guide
  smk "train$gpus.yaml" "$gpus" results/bench/guide/model.pt
  cp results/bench/guide/metrics.csv "$out/metrics_gpus$gpus.csv"
  epoch[$gpus]=$(python3 -c "import pandas as pd; print(pd.read_csv('results/bench/guide/metrics.csv')['seconds'].iloc[-2])")
  echo "guide.gpus $gpus: last epoch ${epoch[$gpus]} s" | tee -a "$out/two_gpus.txt"
done
python3 - "$train" "${epoch[1]}" "${epoch[2]}" <<'PY' | tee -a "$out/two_gpus.txt"
import sys
n, one, two = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f"training epoch of {n} images: 1 GPU {n / one:.1f} images/s, 2 GPUs (DDP) "
      f"{n / two:.1f} images/s; ratio {one / two:.2f}x")
PY
