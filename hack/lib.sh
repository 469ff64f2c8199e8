# Shared by hack/*.sh (sourced). The dev stack keeps all its state in .dev/ (or
# $TASKRUN_DEV_DIR): env, kubeconfig, logs/<name>.log, pids/<name>.pid. Scripts in hack/up.d/
# may use start_bg and append_env.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV_DIR="${TASKRUN_DEV_DIR:-$REPO_ROOT/.dev}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/taskrun/cargo-target}"
RUST_BIN_DIR="$CARGO_TARGET_DIR/debug"
export REPO_ROOT DEV_DIR RUST_BIN_DIR
mkdir -p "$DEV_DIR/logs" "$DEV_DIR/pids"

# pid_alive NAME: the process named by .dev/pids/NAME.pid runs.
pid_alive() {
  local pid_file="$DEV_DIR/pids/$1.pid" pid
  [[ -f "$pid_file" ]] || return 1
  pid="$(<"$pid_file")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

# start_bg NAME CMD...: runs CMD in the background, in its own session (a Ctrl-C in the
# terminal does not reach it; make down stops it), logging to .dev/logs/NAME.log and recording
# its pid in .dev/pids/NAME.pid. Does nothing if that pid is alive.
start_bg() {
  local name="$1"; shift
  if pid_alive "$name"; then
    echo "  $name already running (pid $(<"$DEV_DIR/pids/$name.pid"))"
    return 0
  fi
  # In a non-interactive shell the background child is no process-group leader, so setsid
  # execs in place and $! is the command's own pid.
  setsid "$@" >>"$DEV_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DEV_DIR/pids/$name.pid"
  echo "  started $name (pid $!, log $DEV_DIR/logs/$name.log)"
}

# append_env 'export X=...': adds a line to .dev/env (once).
append_env() {
  touch "$DEV_DIR/env"
  grep -qxF -- "$1" "$DEV_DIR/env" || echo "$1" >>"$DEV_DIR/env"
}

# log_tail NAME [LINES]: the end of .dev/logs/NAME.log, for error messages.
log_tail() {
  echo "--- last lines of $DEV_DIR/logs/$1.log ---" >&2
  tail -n "${2:-30}" "$DEV_DIR/logs/$1.log" >&2 2>/dev/null || true
}

# stop_pid NAME: SIGTERM the process of .dev/pids/NAME.pid, SIGKILL after 15 s.
stop_pid() {
  local name="$1" pid_file="$DEV_DIR/pids/$1.pid" pid
  if pid_alive "$name"; then
    pid="$(<"$pid_file")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "  $name (pid $pid) ignored SIGTERM for 15 s: killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "  stopped $name (pid $pid)"
  fi
  rm -f "$pid_file"
}

control_plane_bin_dir() {
  "$REPO_ROOT/tests/cluster/build.sh"
}
