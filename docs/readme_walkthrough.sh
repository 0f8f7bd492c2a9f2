#!/usr/bin/env bash
# Runs the commands of README.md and of the stage pages in docs/ in order on small local data in a scratch folder: the check that every documented command works as written.
#
# Usage: bash docs/readme_walkthrough.sh [SCRATCH_DIR]     (after `make setup`; ~15 min on 2 cores)
#
# Sections are named after the page and section a command comes from.  Placeholders get
# concrete values here: PHOTOS_OR_LIST -> a synthetic corpus, DIR / SET -> held-out synthetic photos,
# photo.jpg / folder/ -> held-out synthetic photos (the real dev photos for the distortion probe,
# which needs 702-px context windows), a URL list -> the dev photos served on
# loopback, 8 GPUs -> 2 CPU processes, the YFCC100M files (not available offline) -> a photo
# folder, N -> 2, --count 100 -> 6 (20 held-out photos). Shared-machine guards: the head gets a
# temp dir and agent port of its own, and `ray stop` becomes stopping that head by process id
# (`ray stop` would end other jobs' Ray runtimes too). Runs that the README gives full budgets
# for (300 training steps, n = 30) keep them; the DDP and override examples run 20 steps.
# `make demo`, `make test`, `make test-fast`, `make lint`, `make study` and `make bench` are run
# on their own. Every command is echoed before it runs; the first failure
# stops the script with its exit status.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=$(cd "$ROOT/../shared/data" && pwd)
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
export PATH="$ROOT/.venv/bin:$PATH" RAY_AUTH_MODE=disabled
cd "$WORK"
run() { echo "+ $*" >&2; "$@"; }
section() { printf '\n### %s (%s)\n' "$1" "$(date +%T)" >&2; }

section "README 1 / docs/pipeline.md: Synthetic camera corpus"
run exiflang synth --out photos --cameras 4 --images 200 --seed 0
mkdir -p heldout && mv photos/00018?_cam*.jpg photos/00019?_cam*.jpg heldout/

section "README 1 / docs/pipeline.md: Dataset shards"
run exiflang shards --source photos --out shards
(cd "$ROOT" && run python pipeline/build_shards.py --source "$WORK/photos" --out "$WORK/shards_script")
run exiflang shards --source heldout --out heldout_shards --executor local
python -m http.server 8765 --bind 127.0.0.1 --directory "$DATA/photos" >/dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
sleep 1
(echo "id,url"; for f in "$DATA"/photos/*.jpg; do b=$(basename "$f"); echo "${b%.jpg},http://127.0.0.1:8765/$b"; done) | gzip > urls.csv.gz
run exiflang shards --source urls.csv.gz --out shards_urls --executor local
run exiflang select-tags --data shards --threshold 0.3

section "README 1 / docs/pipeline.md: On a Ray cluster"
# This head keeps its files in a temp dir of its own, so that its processes can be told apart
# from other Ray runtimes on a shared machine: `ray stop` would end every one of them, so the
# head is stopped by process id instead (head_pids).
RAYTMP=$(mktemp -d /tmp/walk-ray.XXXXXX)
head_pids() {  # this head's processes and all their descendants
    local todo found=""
    todo=$(pgrep -f -- "$RAYTMP" || true)
    while [ -n "$todo" ]; do
        found="$found $todo"
        todo=$(for p in $todo; do pgrep -P "$p" || true; done)
    done
    echo $found
}
stop_head() { local p; p=$(head_pids); [ -z "$p" ] || kill $p 2>/dev/null || true; sleep 5; p=$(head_pids); [ -z "$p" ] || kill -9 $p 2>/dev/null || true; }
trap 'kill $SERVER 2>/dev/null || true; stop_head' EXIT
# The agent's HTTP port (52365 by default) is taken whenever another Ray runs here: a free one.
AGENT_PORT=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run ray start --head --port=6379 --dashboard-host=127.0.0.1 --temp-dir="$RAYTMP" \
    --dashboard-agent-listen-port="$AGENT_PORT"
owner=$(ss -ltnp 2>/dev/null | sed -n 's/.*127.0.0.1:8265 .*pid=\([0-9]*\).*/\1/p' | head -1)
if [ -z "$owner" ] || ! tr '\0' ' ' < "/proc/$owner/cmdline" | grep -q -- "$RAYTMP"; then
    echo "port 8265 is not this head's dashboard (another Ray runtime holds it): not submitting" >&2; exit 1
fi
# On a loaded machine the head's job agent comes up after `ray start` returns: retry until it does.
for attempt in 1 2 3 4 5 6 7 8 9 10; do
    if run ray job submit --address=http://127.0.0.1:8265 --working-dir "$ROOT" \
        --runtime-env-json='{"excludes": [".venv", "shards", "runs", ".git"]}' \
        -- python pipeline/build_shards.py --source "$WORK/photos" --out "$WORK/shards_ray" --per-host-rate 50 \
        2> >(tee "$WORK/submit.err" >&2); then break; fi
    grep -q "No available agent" "$WORK/submit.err" && [ "$attempt" -lt 10 ] || exit 1
    sleep 10
done
stop_head    # stands for `ray stop` (see above)

section "README 2 / docs/training.md: Training"
run exiflang train --data shards --out runs/exp1 --config cpu-small
run exiflang train --data shards --out runs/exp1 --config cpu-small --resume latest
(cd "$ROOT" && run torchrun --nproc_per_node 2 train/main.py --data "$WORK/shards" --out "$WORK/runs/ddp" \
    --config cpu-small run.steps=20)
run exiflang train --data shards --out runs/exp2 --config cpu-small run.steps=20 \
    optim.lr=3e-4 data.batch_size=64 model.pooling=paper

section "README 3 / docs/evaluation.md: Embeddings and index"
run exiflang embed --model runs/exp1/model --data shards --out emb
run exiflang embed --model runs/exp1/model --data shards --out emb_t --text
run exiflang index --emb emb --out index
run exiflang index --emb emb --out index_pq --memory-mb 500
run torchrun --nproc_per_node 2 -m exiflang embed --model runs/exp1/model --data shards --out emb_ranks
run exiflang embed --model runs/exp1/model --images heldout --out emb_photos

section "README 3 / docs/evaluation.md: Lookup and tag evaluation"
run exiflang lookup --model runs/exp1/model --index index heldout/000180_cam*.jpg heldout/ -k 10
run exiflang lookup --model runs/exp1/model --index index heldout/ -k 5 --weighted --json --out res.jsonl --tags Make,Model
run exiflang eval-tags --model runs/exp1/model --train shards --test heldout_shards --out tag_eval -k 10

section "README 4 / docs/forensics.md: Splice detection"
run exiflang detect --model runs/exp1/model "$DATA/forensics/realistic-tampering-sample" --out detections
run python - <<'EOF'
from pathlib import Path
from exiflang.eval.forensics.detect import Detector, write_outputs
from exiflang.eval.images import load_rgb
photo = sorted(Path("heldout").glob("*.jpg"))[0]
det = Detector("runs/exp1/model", per_side=30)
res = det.detect(load_rgb(photo))
write_outputs(res, load_rgb(photo), Path("out"), "photo")
print(sorted(p.name for p in Path("out").iterdir()), res.scores)
EOF

section "README 4 / docs/forensics.md: Splice benchmarks"
run exiflang make-splices --photos heldout --out splices --count 6 --seed 0
run exiflang benchmark --model runs/exp1/model --dataset folder --root splices --out bench \
    --method exif,noi --patches-per-side 30 --save-maps

section "docs/evaluation.md: The demo report"
run python -m exiflang.eval.report.html --out report.html --run runs/exp1 --lookup res.jsonl \
    --detections detections/results.jsonl --metrics bench/metrics.json

section "docs/evaluation.md: Radial-distortion linear probe"
run python -m exiflang.eval.probes.distortion_probe --model runs/exp1/model --photos "$DATA/photos" --out dist --per-photo 2 --seed 0
run python -m exiflang.eval.probes.distortion_probe --random-init cpu-small --photos "$DATA/photos" --out dist_random --per-photo 2

section "done"
echo "every command above ran; outputs under $WORK" >&2
