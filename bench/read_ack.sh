#!/usr/bin/env bash
# Instructions a message of parse + map + ACK alone (bench/read_ack.py): callgrind at 250 and at 50
# messages, (Ir(250) - Ir(50)) / 200, PYTHONHASHSEED=0 (under a minute).
#   bench/read_ack.sh                 this tree
#   bench/read_ack.sh /path/to/tree   another tree (a git worktree, a `git archive` of a commit), same venv
#   KEEP=FILE bench/read_ack.sh       also keep the 250-message callgrind output in FILE
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
tree="$(cd "${1:-$here}" && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
out="$(mktemp -d "${TMPDIR:-/tmp}/read_ack.XXXXXX")"
trap 'rm -rf "$out"' EXIT
source "$here/bench/_callgrind.sh"
for n in 50 250; do
  callgrind "$n" "$tree/bench" "$tree" read_ack.py --messages "$n"
done
if [[ -n "${KEEP:-}" ]]; then cp "$out/cg.250" "$KEEP"; fi
per_message 50 250 "$tree"
