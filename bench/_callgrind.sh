# Shared by bench/instructions.sh, bench/groups.sh and bench/read_ack.sh (sourced, not run): callgrind of a
# bench script at two message counts, and instructions a message from the difference, which leaves out
# start-up and warm-up (the steady figure on a shared machine). Expects `python` and `out` to be set.

command -v valgrind >/dev/null || { echo "valgrind is needed (Debian: apt-get install valgrind)" >&2; exit 1; }

#: the PostgreSQL server of `fresh_database` (GATEWAY_TEST_PG_URL's, as the tests)
server="${GATEWAY_TEST_PG_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}"

# fresh_database NAME: drop and create database NAME on `server`; prints its URL
fresh_database() {
  "$python" - "$server" "$1" <<'PY'
import sys
from sqlalchemy import create_engine, text
engine = create_engine(sys.argv[1], isolation_level="AUTOCOMMIT")
with engine.connect() as conn:
    conn.execute(text(f'DROP DATABASE IF EXISTS "{sys.argv[2]}"'))
    conn.execute(text(f'CREATE DATABASE "{sys.argv[2]}"'))
PY
  echo "${server%/*}/$1"
}

# callgrind N DIR PYTHONPATH SCRIPT ARGS…: run SCRIPT from DIR under callgrind into $out/cg.N (log $out/log.N)
callgrind() {
  local n="$1" dir="$2" path="$3"
  shift 3
  (cd "$dir" && PYTHONHASHSEED=0 PYTHONPATH="$path" valgrind --tool=callgrind \
    --callgrind-out-file="$out/cg.$n" "$python" "$@" >"$out/log.$n" 2>&1) \
    || { cat "$out/log.$n" >&2; exit 1; }
}

# per_message LOW HIGH WHAT: (Ir(HIGH) - Ir(LOW)) / (HIGH - LOW) of the two runs, printed with WHAT
per_message() {
  "$python" -c "import sys; a, b, n = map(int, sys.argv[1:4]); print(f'{(b - a) / n / 1e6:.3f} M instructions a message ({sys.argv[4]})')" \
    "$(_ir "$out/cg.$1")" "$(_ir "$out/cg.$2")" "$(($2 - $1))" "$3"
}

_ir() { grep -m1 '^summary:' "$1" | awk '{print $2}'; }
