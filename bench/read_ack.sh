#!/usr/bin/env bash
# Instructions a message of parse + map + ACK alone (bench/read_ack.py): callgrind at 250 and at 50
# messages, (Ir(250) - Ir(50)) / 200, PYTHONHASHSEED=0 (under a minute).
#   bench/read_ack.sh                 this tree
#   bench/read_ack.sh /path/to/tree   another tree (a git worktree, a `git archive` of a commit), same venv
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
tree="$(cd "${1:-$here}" && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
command -v valgrind >/dev/null || { echo "valgrind is needed (Debian: apt-get install valgrind)" >&2; exit 1; }
out="$(mktemp -d "${TMPDIR:-/tmp}/read_ack.XXXXXX")"
trap 'rm -rf "$out"' EXIT
for n in 50 250; do
  (cd "$tree/bench" && PYTHONHASHSEED=0 PYTHONPATH="$tree" valgrind --tool=callgrind \
    --callgrind-out-file="$out/cg.$n" "$python" read_ack.py --messages "$n" >"$out/log.$n" 2>&1) \
    || { cat "$out/log.$n" >&2; exit 1; }
done
if [[ -n "${KEEP:-}" ]]; then cp "$out/cg.250" "$KEEP"; fi
ir() { grep -m1 '^summary:' "$1" | awk '{print $2}'; }
"$python" -c "import sys; a, b = map(int, sys.argv[1:3]); print(f'{(b - a) / 200 / 1e6:.3f} M instructions a message ({sys.argv[3]})')" \
  "$(ir "$out/cg.50")" "$(ir "$out/cg.250")" "$tree"
