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
command -v valgrind >/dev/null || { echo "valgrind is needed (Debian: apt-get install valgrind)" >&2; exit 1; }
out="$(mktemp -d "${TMPDIR:-/tmp}/groups.XXXXXX")"
trap 'rm -rf "$out"' EXIT
server="${GATEWAY_TEST_PG_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}"
for n in 200 400; do
  db=()
  if [[ -n "${PG:-}" ]]; then
    name="groups_$$_$n"
    "$python" - "$server" "$name" <<'PY'
import sys
from sqlalchemy import create_engine, text
engine = create_engine(sys.argv[1], isolation_level="AUTOCOMMIT")
with engine.connect() as conn:
    conn.execute(text(f'DROP DATABASE IF EXISTS "{sys.argv[2]}"'))
    conn.execute(text(f'CREATE DATABASE "{sys.argv[2]}"'))
PY
    db=(--database-url "${server%/*}/$name")
  fi
  # the bench script is this tree's (an older tree may not have it), the code under test the tree's
  (cd "$here/bench" && PYTHONHASHSEED=0 PYTHONPATH="$tree:$here/bench" valgrind --tool=callgrind \
    --callgrind-out-file="$out/cg.$n" "$python" groups.py --messages "$n" --group "$group" "${db[@]}" \
    >"$out/log.$n" 2>&1) || { cat "$out/log.$n" >&2; exit 1; }
done
ir() { grep -m1 '^summary:' "$1" | awk '{print $2}'; }
"$python" -c "import sys; a, b = map(int, sys.argv[1:3]); print(f'{(b - a) / 200 / 1e6:.3f} M instructions a message, groups of {sys.argv[4]} ({sys.argv[3]})')" \
  "$(ir "$out/cg.200")" "$(ir "$out/cg.400")" "$tree" "$group"
