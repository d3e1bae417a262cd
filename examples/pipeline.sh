#!/usr/bin/env bash
# A shell pipeline that makes 40 calls, 20 at a time, against a provider allowing 3 at once.
#
# It starts the fake provider (examples/fake_provider.py, as a script) and runs the pipeline
# twice: once calling it directly, when the provider refuses what is over its limit with 429,
# and once with each call under `collet-limiter run`, when nothing is refused:
#
#   seq 40 | xargs -P 20 -I{} collet-limiter run --model openai/gpt-4o -- \
#       python examples/call_model.py --base-url URL --prompt "item {}" ...
#
# call_model.py exits 75 on a 429. When `collet-limiter run` has --cooldown-on-exit, the
# pipeline passes `--cooldown-on-exit 75`, so such a call makes the model cool down for every
# process (for [limiter] cooldown_secs, 1 s here) and, with [limiter] adaptive, lowers its
# limit; either way an unanswered item is tried again in another pass (at most 5 passes).
# The database is a temporary one (printed), removed at the end with the provider stopped.
#
# usage: examples/pipeline.sh [COUNT [PARALLEL [CLAIMED]]]   (default: 40, 20 and 3)
#   CLAIMED is the limit the config gives gpt-4o; above the provider's 3, the limiter meets
#   429s and has to learn (see the status printed at the end).
# environment: PYTHON (default python3); collet-limiter is taken from PATH, else
#   "$PYTHON -m collet_limiter". Exit status 0 when the limited passes answered every item.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
count=${1:-40}
parallel=${2:-20}
limit=3
claimed=${3:-$limit}
python=${PYTHON:-python3}
if command -v collet-limiter >/dev/null; then
  limiter=(collet-limiter)
else
  limiter=("$python" -m collet_limiter)
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/collet-pipeline.XXXXXX")
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true # SIGTERM: the fake provider stops and exits 0
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The fake provider prints its URL once it listens; reading it through a FIFO waits for that.
mkfifo "$work/url"
"$python" "$here/fake_provider.py" --limit "gpt-4o=$limit" --delay 0.2 --retry-after 0.5 \
  >"$work/url" &
server_pid=$!
read -r url <"$work/url" || { echo "pipeline: the fake provider did not start" >&2; exit 1; }
echo "fake provider: $url (gpt-4o: $limit at once, 0.2 s per answer)"

stats() { # the provider's own counts for gpt-4o since the last reset
  PYTHONPATH="$here" "$python" - "$url" "$limit" <<'EOF'
import sys
from fake_provider import fetch_stats
s = fetch_stats(sys.argv[1])["gpt-4o"]
print(f"  gpt-4o: {s.requests} requests, {s.ok} answered, {s.rate_limited} refused with 429, "
      f"peak {s.peak} in flight (server limit {sys.argv[2]})")
EOF
}

reset_stats() {
  PYTHONPATH="$here" "$python" -c \
    'import sys; from fake_provider import remote_reset; remote_reset(sys.argv[1])' "$url"
}

answered() { find "$1" -type f | wc -l | tr -d ' '; }

# 1. Without the limiter: every call goes straight to the provider.
mkdir "$work/direct"
seq "$count" | xargs -P "$parallel" -I{} \
  "$python" "$here/call_model.py" --base-url "$url" --model gpt-4o --prompt "item {}" \
  --out "$work/direct/{}" 2>/dev/null || true # xargs exits 123 when some call failed
echo "without the limiter: $(answered "$work/direct") of $count answered"
stats

# 2. With the limiter: the same calls, each holding a permit for openai/gpt-4o.
reset_stats
export COLLET_LIMITER_DB="$work/limiter.db" COLLET_LIMITER_CONFIG="$work/config.toml"
cat >"$COLLET_LIMITER_CONFIG" <<EOF
[collaboration]
max_agents = $parallel

[[providers]]
name = "openai"
base_url = "$url/v1"
models = ["gpt-4o"]

[[models]]
name = "gpt-4o"
concurrency_limit = $claimed

[limiter]
cooldown_secs = 1   # how long --cooldown-on-exit cools the model (the provider asks 0.5 s)
adaptive = true     # each refusal also lowers the model's limit
EOF
echo "database: $COLLET_LIMITER_DB (temporary); config: $COLLET_LIMITER_CONFIG"
echo "the config gives gpt-4o a limit of $claimed"

cooldown=()
help=$("${limiter[@]}" run --help)
case $help in
  *--cooldown-on-exit*) cooldown=(--cooldown-on-exit 75) ;;
  *) echo "note: this collet-limiter run has no --cooldown-on-exit; a 429 is only retried" ;;
esac

mkdir "$work/limited"
for pass in 1 2 3 4 5; do
  todo=$(seq "$count" | while read -r item; do
    [ -e "$work/limited/$item" ] || echo "$item"
  done)
  [ -n "$todo" ] || break
  [ "$pass" = 1 ] || echo "pass $pass: $(echo "$todo" | wc -l | tr -d ' ') unanswered item(s)"
  echo "$todo" | xargs -P "$parallel" -I{} \
    "${limiter[@]}" run -q --model openai/gpt-4o ${cooldown[@]+"${cooldown[@]}"} -- \
    "$python" "$here/call_model.py" --base-url "$url" --prompt "item {}" \
    --out "$work/limited/{}" || true # exits 123 if a call was refused (75); retried next pass
done
done_count=$(answered "$work/limited")
echo "with the limiter: $done_count of $count answered"
stats
if [ "$claimed" != "$limit" ]; then
  echo "what the limiter learned:"
  "${limiter[@]}" status
fi
[ "$done_count" = "$count" ]
