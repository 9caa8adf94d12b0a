#!/usr/bin/env bash
# HTTPS and HTTP/2 benchmark (issue 5): condo with a site's own certificate (TLS ends in
# the tenant's worker) and with the host's wildcard (TLS ends in the dispatcher), against
# nginx with the same certificates and files.
#
#   HTTPS/1.1 keep-alive      h2load --h1, BENCH_CONNS connections, BENCH_DURATION
#   new handshake/request     h2load --h1, 1,000 clients with one request each
#   HTTP/2                    h2load, 10 connections x 10 streams, BENCH_DURATION
#
# A third column, "nginx -> backend", is the shape a host builds for per-user isolation
# with nginx: TLS ends in a front nginx that proxies every request (upstream keepalive,
# over a unix socket) to a backend that reads the files. condo's provider-certificate
# path has that shape (the dispatcher holds the host's key and never reads tenant
# files), so that column is the fair yardstick for its rows; nginx alone, reading every
# tenant's files in one process, is the one for the own-certificate rows.
# (Here the backend is a second server block of the same nginx, as one user: the same
# hops and copies; a real setup runs one backend per tenant uid.)
#
# Run as root on Debian:   sudo bench/tls.sh
# Quick:                   sudo BENCH_DURATION=3s bench/tls.sh
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
RESULTS_DIR=$SCRIPT_DIR/results

CONDO_TLS_PORT=${CONDO_TLS_PORT:-18443}
NGINX_TLS_PORT=${NGINX_TLS_PORT:-18444}
NGINX_PROXY_PORT=${NGINX_PROXY_PORT:-18445}
BENCH_SERVERS="condo nginx nginx-proxy"
PROBE_PATH=/small.txt

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$SCRIPT_DIR/lib.sh"

install_deps() {
    local need=()
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
    command -v h2load >/dev/null || need+=(nghttp2-client)
    command -v openssl >/dev/null || need+=(openssl)   # the test PKI
    command -v curl >/dev/null || need+=(curl)
    command -v ss >/dev/null || need+=(iproute2)
    apt_install "${need[@]}"
}

# A CA, a.test's own certificate (a's), the host's *.hosting.test wildcard.
make_pki() {
    local d=$TMP/pki
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=condo bench CA" -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
    issue() {   # NAME SAN OUT
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
            -keyout "$3.key" -out "$3.csr" 2>/dev/null
        printf 'subjectAltName=%s\n' "$2" >"$3.ext"
        openssl x509 -req -in "$3.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
            -days 30 -extfile "$3.ext" -out "$3.pem" 2>/dev/null
    }
    issue a.test "DNS:a.test" "$d/a"
    issue '*.hosting.test' "DNS:*.hosting.test" "$d/wild"
    # a's key in a's tree, readable by a only (condo's worker reads it as a).
    mkdir -p "$TMP/a/tls"
    cp "$d/a.pem" "$d/a.key" "$TMP/a/tls/"
    chown -R "$USER_A:$USER_A" "$TMP/a/tls"
    chmod 0700 "$TMP/a/tls"
    chmod 0600 "$TMP/a/tls/a.key"
}


start_condo_tls() {
    mkdir -p "$TMP/condo/sites"
    cat >"$TMP/condo/condo.toml" <<EOF
[server]
tls_listen = ["127.0.0.1:$CONDO_TLS_PORT"]
user = "$USER_D"
uid_range = [100, 60000]
log_dir = "$TMP/condo/log"
run_dir = "$TMP/condo/run"
state_dir = "$TMP/condo/state"
cgroup_parent = "condo-tls-bench"
worker_threads = ${CONDO_WORKER_THREADS:-1}

[tenant.a]
user = "$USER_A"
[tenant.b]
user = "$USER_B"

[[certificate]]
names = ["*.hosting.test"]
cert = "$TMP/pki/wild.pem"
key = "$TMP/pki/wild.key"
EOF
    cat >"$TMP/condo/sites/a.toml" <<EOF
[[site]]
name = "a.test"
tenant = "a"
root = "$TMP/a/www"
tls = { cert = "$TMP/a/tls/a.pem", key = "$TMP/a/tls/a.key" }
EOF
    cat >"$TMP/condo/sites/b.toml" <<EOF
[[site]]
name = "b.hosting.test"
tenant = "b"
root = "$TMP/b/www"
EOF
    "$CONDO_BIN" check -c "$TMP/condo/condo.toml" >/dev/null || die "condo check failed"
    setsid "$CONDO_BIN" serve -c "$TMP/condo/condo.toml" >"$TMP/condo/stderr.log" 2>&1 </dev/null &
    SERVER_PID[condo]=$!
    wait_https "$CONDO_TLS_PORT" condo
}

start_nginx_tls() {
    mkdir -p "$TMP/nginx/logs"
    cat >"$TMP/nginx/nginx.conf" <<EOF
user $USER_W;
worker_processes auto;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log $TMP/nginx/logs/access.log combined;
    keepalive_requests 100000;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;      # condo keeps no server-side session cache either
    client_body_temp_path $TMP/nginx/cb; proxy_temp_path $TMP/nginx/px;
    fastcgi_temp_path $TMP/nginx/fc; uwsgi_temp_path $TMP/nginx/uw; scgi_temp_path $TMP/nginx/sc;
    server {
        listen 127.0.0.1:$NGINX_TLS_PORT ssl http2;
        server_name a.test;
        ssl_certificate $TMP/pki/a.pem; ssl_certificate_key $TMP/pki/a.key;
        root $TMP/a/www;
    }
    server {
        listen 127.0.0.1:$NGINX_TLS_PORT ssl http2;
        server_name b.hosting.test;
        ssl_certificate $TMP/pki/wild.pem; ssl_certificate_key $TMP/pki/wild.key;
        root $TMP/b/www;
    }
}
EOF
    setsid nginx -c "$TMP/nginx/nginx.conf" -g 'daemon off;' >"$TMP/nginx/stderr.log" 2>&1 </dev/null &
    SERVER_PID[nginx]=$!
    wait_https "$NGINX_TLS_PORT" nginx
}

# nginx -> backend: one nginx, a TLS front and a plain backend per site on unix sockets.
start_nginx_proxy() {
    mkdir -p "$TMP/nginx-proxy/logs"
    local d=$TMP/nginx-proxy
    cat >"$d/nginx.conf" <<EOF
user $USER_W;
worker_processes auto;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 4096; }
http {
    keepalive_requests 100000;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    client_body_temp_path $d/cb; proxy_temp_path $d/px;
    fastcgi_temp_path $d/fc; uwsgi_temp_path $d/uw; scgi_temp_path $d/sc;
    upstream back_a { server unix:$d/a.sock; keepalive 32; }
    upstream back_b { server unix:$d/b.sock; keepalive 32; }
    server {
        listen 127.0.0.1:$NGINX_PROXY_PORT ssl http2;
        server_name a.test;
        access_log $d/logs/front.log combined;
        ssl_certificate $TMP/pki/a.pem; ssl_certificate_key $TMP/pki/a.key;
        location / { proxy_pass http://back_a; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
    server {
        listen 127.0.0.1:$NGINX_PROXY_PORT ssl http2;
        server_name b.hosting.test;
        access_log $d/logs/front.log combined;
        ssl_certificate $TMP/pki/wild.pem; ssl_certificate_key $TMP/pki/wild.key;
        location / { proxy_pass http://back_b; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
    server { listen unix:$d/a.sock; access_log $d/logs/a.log combined; root $TMP/a/www; }
    server { listen unix:$d/b.sock; access_log $d/logs/b.log combined; root $TMP/b/www; }
}
EOF
    setsid nginx -c "$d/nginx.conf" -g 'daemon off;' >"$d/stderr.log" 2>&1 </dev/null &
    SERVER_PID[nginx-proxy]=$!
    wait_https "$NGINX_PROXY_PORT" nginx-proxy
}

wait_https() {   # PORT NAME
    local i
    for ((i = 0; i < 100; i++)); do
        if curl -s --max-time 2 --cacert "$TMP/pki/ca.pem" --resolve "a.test:$1:127.0.0.1" \
            "https://a.test:$1/small.txt" | grep -q Hello; then
            return 0
        fi
        sleep 0.2
    done
    die "$2 does not answer https://a.test:$1/small.txt"
}

declare -A R=()

# Requests h2load counted as failed or errored (no output at all counts as one).
h2load_errors() {
    awk '/^requests:/ {print $(NF-5) + $(NF-3); found = 1} END {if (!found) print 1}' <<<"$1"
}

# measure SERVER PORT: every workload for both sites.
measure() {
    local name=$1 port=$2 sni run
    for ((run = 1; run <= BENCH_RUNS; run++)); do
        for sni in a.test b.hosting.test; do
            # One request per connection: 1,000 clients, each a full handshake (no
            # resumption) and one request. (h2load's timed mode with Connection: close
            # spins forever in nghttp2 1.52, hence the count mode.)
            one "$name" "$port" "$sni" h1 "https/1.1 keep-alive" --h1 -c "$BENCH_CONNS" -D "$SECS" --warm-up-time=1
            one "$name" "$port" "$sni" new "new handshake" --h1 -n 1000 -c 1000
            one "$name" "$port" "$sni" h2 "h2" -c 10 -m 10 -D "$SECS" --warm-up-time=1
            log "$name $sni run $run: https/1.1 ${R[$name,$sni,h1]:-?} req/s, new handshake ${R[$name,$sni,new]:-?}/s, h2 ${R[$name,$sni,h2]:-?} req/s (best so far)"
        done
    done
}

# one SERVER PORT SNI KEY LABEL H2LOAD-ARGS...: one h2load run (bounded by timeout); the
# best of the runs goes into R, every run into the CSV.
one() {
    local name=$1 port=$2 sni=$3 key=$4 label=$5 out rps
    out=$(measure_load timeout $((SECS + 60)) h2load "${@:6}" \
        --connect-to="127.0.0.1:$port" "https://$sni:$port/small.txt")
    rps=$(awk '/^finished in/ {gsub(",", "", $4); print int($4)}' <<<"$out")
    raw "=== $name $sni $label ===" "$out"
    csv_row "$name" "$sni $label" "$run" "${rps:-0}" "" "" \
        "$(awk '/^bench-cpu:/ {print $2}' <<<"$out")" "$(awk '/^bench-rss:/ {print $2}' <<<"$out")" \
        "$(h2load_errors "$out")"
    if ((${rps:-0} > ${R[$name,$sni,$key]:-0})); then R[$name,$sni,$key]=$rps; fi
}

report() {
    local md sni w c n p
    md=$RESULTS_DIR/tls-$(date +%Y%m%d-%H%M%S)-$(hostname -s).md
    {
        printf '# HTTPS and HTTP/2: condo vs nginx, same certificates\n\n'
        printf '%s, %s cores, %s; condo %s; %s per cell, best of '"$BENCH_RUNS"' runs\n\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" \
            "$(uname -r)" "$(cd "$REPO_DIR" && git rev-parse --short HEAD 2>/dev/null || echo '?')" "$BENCH_DURATION"
        printf '| site (certificate) | workload | condo | nginx | condo/nginx | nginx -> backend | condo/(nginx -> backend) |\n|---|---|--:|--:|--:|--:|--:|\n'
        for sni in a.test b.hosting.test; do
            for w in h1 new h2; do
                c=${R[condo,$sni,$w]:-0}; n=${R[nginx,$sni,$w]:-0}; p=${R[nginx-proxy,$sni,$w]:-0}
                printf '| %s | %s | %s | %s | %s | %s | %s |\n' \
                    "$([[ $sni == a.test ]] && echo 'a.test (own: TLS in the worker)' || echo 'b.hosting.test (host wildcard: TLS in the dispatcher)')" \
                    "$(case $w in h1) echo "HTTPS/1.1 keep-alive, $BENCH_CONNS conns (req/s)";; new) echo 'new handshake per request, 1,000 clients x 1 (req/s)';; h2) echo 'h2, 10 conns x 10 streams (req/s)';; esac)" \
                    "$c" "$n" "$( ((n > 0)) && printf '%.2f' "$(bc -l <<<"$c/$n")" || echo -)" \
                    "$p" "$( ((p > 0)) && printf '%.2f' "$(bc -l <<<"$c/$p")" || echo -)"
            done
        done
        printf '\nTarget: >= 0.9x nginx. h2load runs on the same 2 cores as the servers.\n'
    } >"$md"
    cat "$md"
    log "written $md"
}

main() {
    [[ $(id -u) == 0 ]] || die "run as root"
    TMP=$(mktemp -d /tmp/condo-tls.XXXXXX)
    chmod 0755 "$TMP"
    trap cleanup EXIT INT TERM
    CONDO_BIN=${CONDO_BIN:-$REPO_DIR/target/release/condo}
    SECS=$(dur_secs "$BENCH_DURATION")
    mkdir -p "$RESULTS_DIR"
    RAW=$RESULTS_DIR/tls-$(date +%Y%m%d-%H%M%S).raw.log
    install_deps
    command -v bc >/dev/null || apt_install bc
    build_condo || die "no condo binary"
    make_bench_accounts
    make_small_docroots
    make_pki
    start_condo_tls
    measure condo "$CONDO_TLS_PORT"
    stop_server condo
    start_nginx_tls
    measure nginx "$NGINX_TLS_PORT"
    stop_server nginx
    start_nginx_proxy
    measure nginx-proxy "$NGINX_PROXY_PORT"
    stop_server nginx-proxy
    report
}

main "$@"
