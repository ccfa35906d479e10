#!/usr/bin/env bash
# Instructions a message on the group-commit path, steady on a shared machine: callgrind of bench/groups.py
# (``Pipeline.ingest_groups``, groups of GROUP messages, default 20) at 400 and at 200 messages,
# (Ir(400) - Ir(200)) / 200, PYTHONHASHSEED=0: bench/instructions.sh's figure for the writer's groups.
#   bench/groups.sh                 this tree, SQLite
#   bench/groups.sh /path/to/tree   another tree (a git worktree, a `git archive` of a commit), same venv
#   PG=1 bench/groups.sh            on a fresh PostgreSQL database per run (this process's instructions
#                                   only); GATEWAY_TEST_PG_URL's server
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
tree="$(cd "${1:-$here}" && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
group="${GROUP:-20}"
out="$(mktemp -d "${TMPDIR:-/tmp}/groups.XXXXXX")"
trap 'rm -rf "$out"' EXIT
source "$here/bench/_callgrind.sh"
for n in 200 400; do
  db=()
  if [[ -n "${PG:-}" ]]; then db=(--database-url "$(fresh_database "groups_$$_$n")"); fi
  # the bench script is this tree's (an older tree may not have it), the code under test the tree's
  callgrind "$n" "$here/bench" "$tree:$here/bench" groups.py --messages "$n" --group "$group" "${db[@]}"
done
per_message 200 400 "groups of $group, $tree"
