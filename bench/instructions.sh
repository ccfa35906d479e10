#!/usr/bin/env bash
# Instructions a message, the figure that stays put on a shared machine: callgrind of bench/sequential.py
# at 400 and at 200 messages, (Ir(400) - Ir(200)) / 200, PYTHONHASHSEED=0 (about 3 minutes; longer on a
# loaded machine, with the same result).
#   bench/instructions.sh                 this tree, SQLite
#   bench/instructions.sh /path/to/tree   another tree (a git worktree, a `git archive` of a commit), same venv
#   PG=1 bench/instructions.sh            on a fresh PostgreSQL database per run (this process's instructions
#                                         only: the server's are not counted); GATEWAY_TEST_PG_URL's server
# valgrind is given the interpreter itself: it does not follow an `env …` exec (the count would be env's).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
tree="$(cd "${1:-$here}" && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
out="$(mktemp -d "${TMPDIR:-/tmp}/instructions.XXXXXX")"
trap 'rm -rf "$out"' EXIT
source "$here/bench/_callgrind.sh"
for n in 200 400; do
  db=()
  if [[ -n "${PG:-}" ]]; then db=(--database-url "$(fresh_database "instructions_$$_$n")"); fi
  callgrind "$n" "$tree/bench" "$tree" sequential.py --messages "$n" "${db[@]}"
done
per_message 200 400 "$tree"
