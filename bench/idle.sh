#!/usr/bin/env bash
# 10,000 idle connections: what they cost in memory, and what they do to everyone
# else's latency. For condo (pass hand-over: each connection lives in tenant a's worker)
# and nginx (one shared server), in turn:
#   1. wrk against tenant b (b.test) alone: the baseline p50/p99;
#   2. IDLE_CONNS keep-alive connections to tenant a, each after one request, held idle
#      (bench/hold.py); the servers' RSS before and after;
#   3. the same wrk against b.test while they are held.
#
# Run as root on Debian:   sudo bench/idle.sh
# Quicker:                 sudo IDLE_CONNS=2000 BENCH_DURATION=5s bench/idle.sh
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
RESULTS_DIR=$SCRIPT_DIR/results
CONDO_PASS_PORT=${CONDO_PASS_PORT:-18091}
NGINX_PORT=${NGINX_PORT:-18093}
IDLE_CONNS=${IDLE_CONNS:-10000}
BENCH_SERVERS="condo nginx"
PROBE_PATH=/small.txt
BENCH_SUITE=${BENCH_SUITE:-idle}

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$SCRIPT_DIR/lib.sh"

install_deps() {
    local need=()
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
    command -v wrk >/dev/null || need+=(wrk)
    command -v curl >/dev/null || need+=(curl)
    command -v python3 >/dev/null || need+=(python3)
    command -v ss >/dev/null || need+=(iproute2)
    apt_install "${need[@]}"
}


start_condo_idle() {
    mkdir -p "$TMP/condo/sites"
    cat >"$TMP/condo/condo.toml" <<EOT
[server]
listen = [{ addr = "127.0.0.1:$CONDO_PASS_PORT", handover = "pass" }]
user = "$USER_D"
uid_range = [100, 60000]
log_dir = "$TMP/condo/log"
run_dir = "$TMP/condo/run"
cgroup_parent = "condo-idle-bench"
keepalive_timeout = "900s"

[tenant.a]
user = "$USER_A"
[tenant.b]
user = "$USER_B"
EOT
    local t
    for t in a b; do
        printf '[[site]]\nname = "%s.test"\ntenant = "%s"\nroot = "%s"\n' "$t" "$t" "$TMP/$t/www" \
            >"$TMP/condo/sites/$t.toml"
    done
    "$CONDO_BIN" check -c "$TMP/condo/condo.toml" >/dev/null || die "condo check failed"
    setsid "$CONDO_BIN" serve -c "$TMP/condo/condo.toml" >"$TMP/condo/stderr.log" 2>&1 </dev/null &
    SERVER_PID[condo]=$!
    wait_ready "$CONDO_PASS_PORT" b.test "${SERVER_PID[condo]}" 20 || die "condo does not answer"
    wait_ready "$CONDO_PASS_PORT" a.test "${SERVER_PID[condo]}" 20 || die "condo does not answer"
}

start_nginx_idle() {
    mkdir -p "$TMP/nginx/logs"
    cat >"$TMP/nginx/nginx.conf" <<EOT
user $USER_W;
worker_processes auto;
worker_rlimit_nofile 30000;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 20000; }
http {
    keepalive_timeout 900s;
    keepalive_requests 100000;
    access_log $TMP/nginx/logs/access.log combined;
    client_body_temp_path $TMP/nginx/cb; proxy_temp_path $TMP/nginx/px;
    fastcgi_temp_path $TMP/nginx/fc; uwsgi_temp_path $TMP/nginx/uw; scgi_temp_path $TMP/nginx/sc;
    server { listen 127.0.0.1:$NGINX_PORT; server_name a.test; root $TMP/a/www; }
    server { listen 127.0.0.1:$NGINX_PORT; server_name b.test; root $TMP/b/www; }
}
EOT
    setsid nginx -c "$TMP/nginx/nginx.conf" -g 'daemon off;' >"$TMP/nginx/stderr.log" 2>&1 </dev/null &
    SERVER_PID[nginx]=$!
    wait_ready "$NGINX_PORT" a.test "${SERVER_PID[nginx]}" 20 || die "nginx does not answer"
}

declare -A OUT=()
HOLD_PID=""

# The holder is ours too: stop it (by pid) before the servers and accounts go.
stop_holder_then_cleanup() {
    local rc=$?
    [[ -z $HOLD_PID ]] || kill "$HOLD_PID" 2>/dev/null || true
    (exit "$rc")
    cleanup
}

# wrk_b NAME PORT LABEL RUN: the others' load (tenant b), its latency into OUT and the CSV.
wrk_b() {
    local name=$1 port=$2 label=$3 run=$4 out
    out=$(measure_load timeout $(($(dur_secs "$BENCH_DURATION") + 30)) \
        wrk -t"$BENCH_THREADS" -c"$BENCH_CONNS" -d"$BENCH_DURATION" --latency \
        -H 'Host: b.test' "http://127.0.0.1:$port/small.txt")
    raw "=== $name $label run $run ===" "$out"
    parse_wrk "$out"
    local errs=$((W_NON2XX + W_SOCK))
    csv_row "$name" "$label" "$run" "${W_RPS:-0}" "$W_P50" "$W_P99" "${W_CPU:-}" "${W_RSS:-}" "$errs"
    log "$name $label run $run: ${W_RPS:-?} req/s, p50 $W_P50 ms, p99 $W_P99 ms, errors $errs"
    # Keep the run with the lower p99 (the latency is what this measures).
    if [[ -z ${OUT[$name,$label,p99]:-} ]] || awk -v a="$W_P99" -v b="${OUT[$name,$label,p99]}" 'BEGIN {exit !(a < b)}'; then
        OUT[$name,$label,p99]=$W_P99 OUT[$name,$label,p50]=$W_P50 OUT[$name,$label,rps]=${W_RPS:-0}
    fi
}

measure() {   # NAME PORT
    local name=$1 port=$2 run before after line
    for ((run = 1; run <= BENCH_RUNS; run++)); do
        wrk_b "$name" "$port" "others alone" "$run"
    done
    before=$(servers_rss_mb)
    python3 "$SCRIPT_DIR/hold.py" "$port" a.test "$IDLE_CONNS" 900 </dev/null >"$TMP/hold.$name.out" 2>&1 &
    local hold_pid=$!
    HOLD_PID=$hold_pid
    for ((i = 0; i < 1800; i++)); do
        grep -q '^held' "$TMP/hold.$name.out" 2>/dev/null && break
        alive "$hold_pid" || break
        sleep 0.1
    done
    line=$(cat "$TMP/hold.$name.out")
    [[ $line == held* ]] || die "$name: holding $IDLE_CONNS connections failed: $line"
    sleep 2
    after=$(servers_rss_mb)
    log "$name: $line; RSS $before -> $after MiB"
    OUT[$name,rss_before]=$before OUT[$name,rss_after]=$after
    csv_row "$name" "$IDLE_CONNS idle connections" 1 "" "" "" "" \
        "$(awk -v a="$after" -v b="$before" 'BEGIN {printf "%.1f", a - b}')" "$(awk '{print $4}' <<<"$line")"
    for ((run = 1; run <= BENCH_RUNS; run++)); do
        wrk_b "$name" "$port" "others with $IDLE_CONNS idle" "$run"
    done
    kill "$hold_pid" 2>/dev/null || true
    wait "$hold_pid" 2>/dev/null || true
    HOLD_PID=""
}

report() {
    local md=$RESULTS_DIR/idle-$(date +%Y%m%d-%H%M%S)-$(hostname -s).md name
    {
        printf '# %s idle keep-alive connections: memory and the others'"'"' latency\n\n' "$IDLE_CONNS"
        printf '%s, %s cores, %s; condo %s; wrk -c%s -d%s against b.test, best of %s runs\n\n' \
            "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" "$(uname -r)" \
            "$(cd "$REPO_DIR" && git rev-parse --short HEAD 2>/dev/null || echo '?')" \
            "$BENCH_CONNS" "$BENCH_DURATION" "$BENCH_RUNS"
        printf '| server | RSS before (MiB) | RSS holding them (MiB) | added | b alone p50 / p99 (ms) | b with them p50 / p99 (ms) | p99 ratio |\n'
        printf '|---|--:|--:|--:|--:|--:|--:|\n'
        for name in condo nginx; do
            printf '| %s | %s | %s | %s | %s / %s | %s / %s | %s |\n' "$name" \
                "${OUT[$name,rss_before]:-?}" "${OUT[$name,rss_after]:-?}" \
                "$(awk -v a="${OUT[$name,rss_after]:-0}" -v b="${OUT[$name,rss_before]:-0}" 'BEGIN {printf "%.1f", a - b}')" \
                "${OUT[$name,others alone,p50]:-?}" "${OUT[$name,others alone,p99]:-?}" \
                "${OUT[$name,others with $IDLE_CONNS idle,p50]:-?}" "${OUT[$name,others with $IDLE_CONNS idle,p99]:-?}" \
                "$(awk -v a="${OUT[$name,others with $IDLE_CONNS idle,p99]:-0}" -v b="${OUT[$name,others alone,p99]:-0}" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}')"
        done
        printf '\nTarget: the %s connections cost condo <= 100 MB.\n' "$IDLE_CONNS"
    } >"$md"
    cat "$md"
    log "written $md"
}

main() {
    [[ $(id -u) == 0 ]] || die "run as root"
    TMP=$(mktemp -d /tmp/condo-idle.XXXXXX)
    chmod 0755 "$TMP"
    trap stop_holder_then_cleanup EXIT INT TERM
    CONDO_BIN=${CONDO_BIN:-$REPO_DIR/target/release/condo}
    mkdir -p "$RESULTS_DIR"
    RAW=$RESULTS_DIR/idle-$(date +%Y%m%d-%H%M%S).raw.log
    install_deps
    build_condo || die "no condo binary"
    make_bench_accounts
    make_small_docroots
    start_condo_idle
    measure condo "$CONDO_PASS_PORT"
    stop_server condo
    start_nginx_idle
    measure nginx "$NGINX_PORT"
    stop_server nginx
    report
}

main "$@"
