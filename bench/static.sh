#!/usr/bin/env bash
# Static-file benchmark: condo (pass and proxy handover) against nginx (one shared
# uid, the classic setup) and Apache 2.4 with mpm-itk (one uid per vhost).
#
# Run as root on a Debian machine:   sudo bench/static.sh
# Quick smoke run:                   sudo BENCH_DURATION=2s BENCH_RUNS=1 bench/static.sh
# See bench/README.md for what is measured and how to read the table.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
RESULTS_DIR=$SCRIPT_DIR/results

# ---- knobs (environment) ----------------------------------------------------------
BENCH_SERVERS=${BENCH_SERVERS:-"condo-pass condo-proxy nginx itk"}
CONDO_PASS_PORT=${CONDO_PASS_PORT:-18081}
CONDO_PROXY_PORT=${CONDO_PROXY_PORT:-18082}
NGINX_PORT=${NGINX_PORT:-18083}
ITK_PORT=${ITK_PORT:-18084}

SERVERS_ALL=(condo-pass condo-proxy nginx itk)
WORKLOADS=("small.txt keep-alive" "small.txt close" "small.txt alternate" "big.bin keep-alive" "big.bin close")
SMALL_BODY=$'Hello, world\n'   # 13 bytes
BIG_SIZE=102400                # 100 KiB
PROBE_PATH=/small.txt          # what "the server answers" means

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$SCRIPT_DIR/lib.sh"

# ---- 1. packages ------------------------------------------------------------------
install_deps() {
    local need=()
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
    [[ -x /usr/sbin/apache2 ]] || need+=(apache2)
    [[ -e /usr/lib/apache2/modules/mpm_itk.so ]] || need+=(libapache2-mpm-itk)
    command -v wrk >/dev/null || need+=(wrk)
    command -v curl >/dev/null || need+=(curl)
    [[ -e /etc/mime.types ]] || need+=(media-types)    # Apache's TypesConfig
    command -v ss >/dev/null || need+=(iproute2)
    command -v ps >/dev/null || need+=(procps)
    apt_install "${need[@]}"
}

# ---- 3. users and docroots --------------------------------------------------------
make_tree() {
    make_bench_accounts

    local t u
    for t in a b; do
        u=condo-bench-$t
        mkdir -p "$TMP/$t/www"
        printf '%s' "$SMALL_BODY" >"$TMP/$t/www/small.txt"
        head -c "$BIG_SIZE" /dev/urandom >"$TMP/$t/www/big.bin"
        chown -R "$u:$u" "$TMP/$t"
        chmod 0750 "$TMP/$t" "$TMP/$t/www"
        chmod 0640 "$TMP/$t/www/small.txt" "$TMP/$t/www/big.bin"
    done
    [[ $(stat -c %s "$TMP/a/www/small.txt") == 13 ]] || die "small.txt is not 13 bytes"
    # condo creates its own log_dir and run_dir ($TMP/log, $TMP/run); nginx and Apache
    # keep everything under $TMP/nginx and $TMP/apache.
    mkdir -p "$TMP/sites" "$TMP/nginx/logs" "$TMP/apache/logs" "$TMP/apache/run"
}

# ---- hooks for lib.sh -------------------------------------------------------------
# After a server answers: does each vhost serve its own tenant's files?
check_vhosts() {
    local name=$1 port=$2 t sum want
    for t in a b; do
        want=$(md5sum <"$TMP/$t/www/big.bin" | cut -d' ' -f1)
        sum=$(curl -s --max-time 5 -H "Host: $t.test" "http://127.0.0.1:$port/big.bin" | md5sum | cut -d' ' -f1)
        if [[ $sum != "$want" ]]; then
            warn "$name: Host $t.test /big.bin does not return tenant $t's file"
            NOTES+=("**$name: Host $t.test /big.bin did not return tenant $t's file** (vhost routing broken)")
            FAILED=1
        fi
    done
}

expected_file() { printf '%s\n' "$TMP/a/www/$1"; }

# ---- 4. servers -------------------------------------------------------------------
start_nginx() {
    local pid rc=0
    port_busy "$NGINX_PORT" && { warn "port $NGINX_PORT is already in use"; return 1; }
    cat >"$TMP/nginx/nginx.conf" <<EOF
# Classic shared hosting: one account ($USER_W) reads every tenant's files.
user $USER_W;
worker_processes auto;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 100000;   # default 1000 would cut wrk's keep-alive connections
    access_log $TMP/nginx/logs/access.log combined;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    server { listen 127.0.0.1:$NGINX_PORT; server_name a.test; root $TMP/a/www; }
    server { listen 127.0.0.1:$NGINX_PORT; server_name b.test; root $TMP/b/www; }
}
EOF
    log "starting nginx"
    setsid nginx -p "$TMP/nginx/" -e "$TMP/nginx/logs/error.log" -c "$TMP/nginx/nginx.conf" \
        -g 'daemon off;' >"$TMP/nginx/logs/stderr.log" 2>&1 </dev/null &
    pid=$!
    SERVER_PID[nginx]=$pid
    wait_ready "$NGINX_PORT" a.test "$pid" 10 || rc=$?
    if ((rc != 0)); then
        warn "nginx FAILED to start; its logs:"
        cat "$TMP/nginx/logs/stderr.log" "$TMP/nginx/logs/error.log" 2>/dev/null | tail -n 50 >&2
        stop_server nginx
        return 1
    fi
    check_vhosts nginx "$NGINX_PORT"
    show_procs nginx "$pid"
}


# ---- 6. report --------------------------------------------------------------------
HEADER=""
machine_header() {
    HEADER=$(header_common; header_load)
}

report() {
    local w
    {
        echo "# Static files: condo vs nginx vs Apache mpm-itk"
        echo
        echo "$HEADER"
        echo
        echo "| workload | condo-pass rps | p99 | condo-proxy rps | p99 | nginx rps | p99 | mpm-itk rps | p99 | pass/nginx | pass/itk | proxy/nginx |"
        echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
        for w in "${WORKLOADS[@]}"; do
            printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$w" \
                "$(fmt_cell "condo-pass|$w")" "$(fmt_cell "condo-proxy|$w")" \
                "$(fmt_cell "nginx|$w")" "$(fmt_cell "itk|$w")" \
                "$(ratio "condo-pass|$w" "nginx|$w")" "$(ratio "condo-pass|$w" "itk|$w")" \
                "$(ratio "condo-proxy|$w" "nginx|$w")"
        done
        echo
        echo "small.txt = 13 bytes, big.bin = 100 KiB; keep-alive = wrk's persistent connections," \
            "close = \`Connection: close\` on every request (a new TCP connection per request)." \
            "rps = requests/s of the best run, p99 = its 99th-percentile latency. ⚠ = the run had" \
            "non-2xx responses or socket errors (details below); ratios are of rps."
        echo "Servers: nginx with keepalive_requests 100000 (its default of 1000 would cut wrk's" \
            "keep-alive connections), sendfile + tcp_nopush, workers as one account in both tenant" \
            "groups (shared uid); Apache 2.4 prefork + mpm-itk with MaxKeepAliveRequests 0 (unlimited)," \
            "EnableSendfile On, one AssignUserID per vhost; all servers write an access log." \
            "wrk runs on the same cores as the server."
        report_tail
    } >"$MD"
    echo
    cat "$MD"
    echo
    log "report: $MD"
    log "raw wrk output: $RAW"
}

# ---- main -------------------------------------------------------------------------
main() {
    check_knobs
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    install_deps
    open_results static

    if want_condo; then CONDO_BIN=${CONDO_BIN:-$REPO_DIR/target/release/condo}; fi
    machine_header
    echo "$HEADER"
    raw "$HEADER"

    prepare_condo
    make_tree

    run_condo_columns
    run_column nginx "$NGINX_PORT" start_nginx
    run_column itk "$ITK_PORT" start_itk

    report
    if ((FAILED)); then
        warn "some servers or checks FAILED (see 'Problems' above); exit status 1"
        return 1
    fi
}

main "$@"
