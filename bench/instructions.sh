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
command -v valgrind >/dev/null || { echo "valgrind is needed (Debian: apt-get install valgrind)" >&2; exit 1; }
out="$(mktemp -d "${TMPDIR:-/tmp}/instructions.XXXXXX")"
trap 'rm -rf "$out"' EXIT
server="${GATEWAY_TEST_PG_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}"
for n in 200 400; do
  db=()
  if [[ -n "${PG:-}" ]]; then
    name="instructions_$$_$n"
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
  (cd "$tree/bench" && PYTHONHASHSEED=0 PYTHONPATH="$tree" valgrind --tool=callgrind \
    --callgrind-out-file="$out/cg.$n" "$python" sequential.py --messages "$n" "${db[@]}" >"$out/log.$n" 2>&1) \
    || { cat "$out/log.$n" >&2; exit 1; }
done
ir() { grep -m1 '^summary:' "$1" | awk '{print $2}'; }
"$python" -c "import sys; a, b = map(int, sys.argv[1:3]); print(f'{(b - a) / 200 / 1e6:.3f} M instructions a message ({sys.argv[3]})')" \
  "$(ir "$out/cg.200")" "$(ir "$out/cg.400")" "$tree"
