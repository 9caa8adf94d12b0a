#!/usr/bin/env bash
# Scale-to-zero benchmark (issue 3): many configured tenants, most of them idle.
#
#  1. memory with SCALE_TENANTS (1,000) configured idle tenants and no tenant process:
#     condo (master + dispatcher) vs nginx + PHP-FPM with one `pm = ondemand` pool per
#     tenant (master + pools, nginx master + workers);
#  2. cold start: the first request of COLD_TENANTS (200) tenants that have no process
#     yet — a static file (condo starts the tenant's worker) and a PHP script (condo
#     starts the worker and a php-cgi; PHP-FPM ondemand starts a pool child) — p50, p99
#     and max, with the second (warm) request of the same tenants as the baseline.
#
# Run as root on Debian:   sudo bench/scale.sh
# Smaller and quicker:     sudo SCALE_TENANTS=100 COLD_TENANTS=50 bench/scale.sh
# Latencies are curl's time_total (connect to last byte, without curl's own start-up).
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
RESULTS_DIR=$SCRIPT_DIR/results

SCALE_TENANTS=${SCALE_TENANTS:-1000}
COLD_TENANTS=${COLD_TENANTS:-200}
CONDO_PORT=${CONDO_PORT:-18091}
NGINX_PORT=${NGINX_PORT:-18093}
BENCH_SERVERS="condo nginx"        # for lib.sh's helpers
PROBE_PATH=/index.html

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$SCRIPT_DIR/lib.sh"

PHP_FPM=""
USER_PREFIX=condo-scale-   # tenants: condo-scale-0001 ...

((COLD_TENANTS * 2 <= SCALE_TENANTS)) ||
    die "COLD_TENANTS ($COLD_TENANTS) must be at most half of SCALE_TENANTS ($SCALE_TENANTS)"

install_deps() {
    local need=()
    PHP_FPM=$(find /usr/sbin -maxdepth 1 -name 'php-fpm*' -type f 2>/dev/null | sort -V | tail -n 1)
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
    command -v php-cgi >/dev/null || need+=(php-cgi)
    [[ -n $PHP_FPM ]] || need+=(php-fpm)
    command -v curl >/dev/null || need+=(curl)
    command -v ss >/dev/null || need+=(iproute2)
    apt_install "${need[@]}"
    PHP_FPM=$(find /usr/sbin -maxdepth 1 -name 'php-fpm*' -type f 2>/dev/null | sort -V | tail -n 1)
    [[ -n $PHP_FPM ]] || die "no php-fpm after installing it"
}

name_of() { printf '%s%04d' "$USER_PREFIX" "$1"; }

make_tenants() {
    local i u
    log "creating $SCALE_TENANTS tenant accounts and docroots (takes a while)"
    make_user "$USER_D"
    make_user "$USER_W"
    for ((i = 1; i <= SCALE_TENANTS; i++)); do
        u=$(name_of "$i")
        make_user "$u" regular
        mkdir -p "$TMP/t/$i/www"
        printf 'tenant %s\n' "$i" >"$TMP/t/$i/www/index.html"
        printf '<?php echo "hello %s\\n";' "$i" >"$TMP/t/$i/www/hello.php"
        chown -R "$u:$u" "$TMP/t/$i"
        chmod 0750 "$TMP/t/$i" "$TMP/t/$i/www"
        # nginx's workers (USER_W) read the static files; PHP runs as the tenant.
        usermod -a -G "$u" "$USER_W"
    done
}

# Sum of RSS and PSS (KiB) of the given pids.
mem_of() {
    local p rss=0 pss=0 r s
    for p in "$@"; do
        r=$(awk '/^Rss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
        s=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
        rss=$((rss + ${r:-0}))
        pss=$((pss + ${s:-0}))
    done
    printf '%s %s\n' "$rss" "$pss"
}

# percentiles FILE: "p50 p99 max" in ms of a file of seconds.
percentiles() {
    sort -n "$1" | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "- - -"; exit }
        i50 = int(NR * 0.50 + 0.999); i99 = int(NR * 0.99 + 0.999)
        printf "%.2f %.2f %.2f\n", v[i50] * 1000, v[i99] * 1000, v[NR] * 1000 }'
}

# time_requests PORT PATH FIRST LAST OUT: one GET per tenant FIRST..LAST, time_total
# to OUT; any answer other than 200 is a failure.
time_requests() {
    local port=$1 path=$2 first=$3 last=$4 out=$5 i res code
    : >"$out"
    for ((i = first; i <= last; i++)); do
        res=$(curl -s --max-time 10 -o /dev/null -w '%{http_code} %{time_total}' \
            -H "Host: t$i.test" "http://127.0.0.1:$port$path") || res="000 0"
        code=${res%% *}
        if [[ $code != 200 ]]; then
            warn "t$i.test$path answered $code"
            FAILED=1
        fi
        printf '%s\n' "${res#* }" >>"$out"
    done
}

count_user_procs() {   # processes running as any of our tenant accounts
    ps -eo user= | grep -c "^$USER_PREFIX" || true
}

declare -A RESULT=()

bench_condo() {
    local pid i pids
    port_busy "$CONDO_PORT" && die "port $CONDO_PORT is in use"
    mkdir -p "$TMP/condo/sites"
    cat >"$TMP/condo/condo.toml" <<EOF
[server]
listen = ["127.0.0.1:$CONDO_PORT"]
user = "$USER_D"
uid_range = [100, 60000]
log_dir = "$TMP/condo/log"
run_dir = "$TMP/condo/run"
state_dir = "$TMP/condo/state"
cgroup_parent = "condo-scale-bench"

[defaults]
workers_max = 2
EOF
    for ((i = 1; i <= SCALE_TENANTS; i++)); do
        printf '[tenant.t%s]\nuser = "%s"\n' "$i" "$(name_of "$i")" >>"$TMP/condo/condo.toml"
        printf '[[site]]\nname = "t%s.test"\ntenant = "t%s"\nroot = "%s"\n\n[[site.route]]\nsuffix = ".php"\nhandler = "fastcgi"\ncommand = ["php-cgi"]\n' \
            "$i" "$i" "$TMP/t/$i/www" >"$TMP/condo/sites/t$i.toml"
    done
    "$CONDO_BIN" check -c "$TMP/condo/condo.toml" >"$TMP/condo/check.log" 2>&1 ||
        { tail -n 20 "$TMP/condo/check.log" >&2; die "condo check failed"; }
    log "starting condo with $SCALE_TENANTS tenants"
    setsid "$CONDO_BIN" serve -c "$TMP/condo/condo.toml" >"$TMP/condo/stderr.log" 2>&1 </dev/null &
    pid=$!
    SERVER_PID[condo]=$pid
    # Ready when an unknown host gets its 404: that starts no tenant process.
    for ((i = 0; i < 100; i++)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Host: nobody.test' "http://127.0.0.1:$CONDO_PORT/" || true) == 404 ]] && break
        alive "$pid" || { tail -n 30 "$TMP/condo/stderr.log" >&2; die "condo exited"; }
        sleep 0.2
    done
    sleep 2
    mapfile -t pids < <(session_pids "$pid")
    read -r RESULT[condo_rss] RESULT[condo_pss] < <(mem_of "${pids[@]}")
    RESULT[condo_procs]=${#pids[@]}
    RESULT[condo_tenant_procs]=$(count_user_procs)
    log "condo idle: ${#pids[@]} processes, RSS ${RESULT[condo_rss]} KiB, PSS ${RESULT[condo_pss]} KiB, tenant processes ${RESULT[condo_tenant_procs]}"

    time_requests "$CONDO_PORT" /index.html 1 "$COLD_TENANTS" "$TMP/condo-cold-static"
    time_requests "$CONDO_PORT" /index.html 1 "$COLD_TENANTS" "$TMP/condo-warm-static"
    local from=$((COLD_TENANTS + 1)) to=$((2 * COLD_TENANTS))
    time_requests "$CONDO_PORT" /hello.php "$from" "$to" "$TMP/condo-cold-php"
    time_requests "$CONDO_PORT" /hello.php "$from" "$to" "$TMP/condo-warm-php"
    RESULT[condo_cold_static]=$(percentiles "$TMP/condo-cold-static")
    RESULT[condo_warm_static]=$(percentiles "$TMP/condo-warm-static")
    RESULT[condo_cold_php]=$(percentiles "$TMP/condo-cold-php")
    RESULT[condo_warm_php]=$(percentiles "$TMP/condo-warm-php")
    stop_server condo
}

bench_fpm() {
    local pid fpm_pid i u pids
    port_busy "$NGINX_PORT" && die "port $NGINX_PORT is in use"
    mkdir -p "$TMP/fpm" "$TMP/nginx/logs"
    cat >"$TMP/fpm/php-fpm.conf" <<EOF
[global]
pid = $TMP/fpm/php-fpm.pid
error_log = $TMP/fpm/error.log
daemonize = no
rlimit_files = 16384
EOF
    for ((i = 1; i <= SCALE_TENANTS; i++)); do
        u=$(name_of "$i")
        cat >>"$TMP/fpm/php-fpm.conf" <<EOF
[t$i]
user = $u
group = $u
listen = $TMP/fpm/t$i.sock
listen.owner = $USER_W
listen.group = $USER_W
listen.mode = 0660
pm = ondemand
pm.max_children = 2
pm.process_idle_timeout = 60s
EOF
    done
    log "starting php-fpm with $SCALE_TENANTS ondemand pools"
    setsid "$PHP_FPM" -F -y "$TMP/fpm/php-fpm.conf" >"$TMP/fpm/stderr.log" 2>&1 </dev/null &
    fpm_pid=$!
    SERVER_PID[php-fpm]=$fpm_pid
    for ((i = 0; i < 200; i++)); do
        [[ -S $TMP/fpm/t$SCALE_TENANTS.sock ]] && break
        alive "$fpm_pid" || { tail -n 30 "$TMP/fpm/stderr.log" "$TMP/fpm/error.log" >&2; die "php-fpm exited"; }
        sleep 0.1
    done
    {
        printf 'user %s;\nworker_processes auto;\npid %s/nginx/nginx.pid;\nerror_log %s/nginx/logs/error.log warn;\n' "$USER_W" "$TMP" "$TMP"
        printf 'events { worker_connections 1024; }\nhttp {\n    access_log off;\n    server_names_hash_bucket_size 64;\n    server_names_hash_max_size 4096;\n'
        for d in client_body proxy fastcgi uwsgi scgi; do printf '    %s_temp_path %s/nginx/%s;\n' "$d" "$TMP" "$d"; done
        for ((i = 1; i <= SCALE_TENANTS; i++)); do
            printf '    server { listen 127.0.0.1:%s; server_name t%s.test; root %s/t/%s/www;\n' "$NGINX_PORT" "$i" "$TMP" "$i"
            printf '        location ~ \\.php$ { include /etc/nginx/fastcgi_params; fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name; fastcgi_pass unix:%s/fpm/t%s.sock; } }\n' "$TMP" "$i"
        done
        printf '}\n'
    } >"$TMP/nginx/nginx.conf"
    log "starting nginx with $SCALE_TENANTS server blocks"
    setsid nginx -c "$TMP/nginx/nginx.conf" -g 'daemon off;' >"$TMP/nginx/stderr.log" 2>&1 </dev/null &
    pid=$!
    SERVER_PID[nginx]=$pid
    wait_ready "$NGINX_PORT" t1.test "$pid" 20 || { tail -n 30 "$TMP/nginx/stderr.log" >&2; die "nginx did not answer"; }
    sleep 2
    mapfile -t pids < <(session_pids "$fpm_pid")
    read -r RESULT[fpm_rss] RESULT[fpm_pss] < <(mem_of "${pids[@]}")
    RESULT[fpm_procs]=${#pids[@]}
    mapfile -t pids < <(session_pids "$pid")
    read -r RESULT[nginx_rss] RESULT[nginx_pss] < <(mem_of "${pids[@]}")
    RESULT[nginx_procs]=${#pids[@]}
    RESULT[fpm_tenant_procs]=$(count_user_procs)
    log "php-fpm idle: ${RESULT[fpm_procs]} processes, RSS ${RESULT[fpm_rss]} KiB; nginx ${RESULT[nginx_procs]} processes, RSS ${RESULT[nginx_rss]} KiB"
    local from=$((COLD_TENANTS + 1)) to=$((2 * COLD_TENANTS))
    time_requests "$NGINX_PORT" /hello.php "$from" "$to" "$TMP/fpm-cold-php"
    time_requests "$NGINX_PORT" /hello.php "$from" "$to" "$TMP/fpm-warm-php"
    RESULT[fpm_cold_php]=$(percentiles "$TMP/fpm-cold-php")
    RESULT[fpm_warm_php]=$(percentiles "$TMP/fpm-warm-php")
    stop_server nginx
    stop_server php-fpm
}

report() {
    local md=$RESULTS_DIR/scale-$(date +%Y%m%d-%H%M%S)-$(hostname -s).md
    mkdir -p "$RESULTS_DIR"
    {
        printf '# Scale to zero: %s tenants configured, cold starts of %s\n\n' "$SCALE_TENANTS" "$COLD_TENANTS"
        printf '%s, %s cores, %s; condo %s\n\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" "$(uname -r)" \
            "$(cd "$REPO_DIR" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
        printf '## Memory with every tenant idle (no tenant process)\n\n'
        printf '| setup | processes | RSS (MiB) | PSS (MiB) | tenant processes |\n|---|--:|--:|--:|--:|\n'
        printf '| condo (master + dispatcher) | %s | %.1f | %.1f | %s |\n' "${RESULT[condo_procs]}" \
            "$(bc -l <<<"${RESULT[condo_rss]}/1024")" "$(bc -l <<<"${RESULT[condo_pss]}/1024")" "${RESULT[condo_tenant_procs]}"
        printf '| PHP-FPM, %s ondemand pools | %s | %.1f | %.1f | %s |\n' "$SCALE_TENANTS" "${RESULT[fpm_procs]}" \
            "$(bc -l <<<"${RESULT[fpm_rss]}/1024")" "$(bc -l <<<"${RESULT[fpm_pss]}/1024")" "${RESULT[fpm_tenant_procs]}"
        printf '| nginx in front of it | %s | %.1f | %.1f | - |\n' "${RESULT[nginx_procs]}" \
            "$(bc -l <<<"${RESULT[nginx_rss]}/1024")" "$(bc -l <<<"${RESULT[nginx_pss]}/1024")"
        printf '\nTarget: condo <= 30 MB in total with zero tenant processes.\n\n'
        printf '## First request of a tenant with no process (ms: p50 / p99 / max)\n\n'
        printf '| request | condo cold | condo warm | nginx + PHP-FPM ondemand cold | warm |\n|---|---|---|---|---|\n'
        read -r a b c <<<"${RESULT[condo_cold_static]}"; read -r d e f <<<"${RESULT[condo_warm_static]}"
        printf '| static file (worker start) | %s / %s / %s | %s / %s / %s | n/a (no per-tenant process) | |\n' "$a" "$b" "$c" "$d" "$e" "$f"
        read -r a b c <<<"${RESULT[condo_cold_php]}"; read -r d e f <<<"${RESULT[condo_warm_php]}"
        local g h k l m n
        read -r g h k <<<"${RESULT[fpm_cold_php]}"; read -r l m n <<<"${RESULT[fpm_warm_php]}"
        printf '| PHP hello (worker + php-cgi / pool child start) | %s / %s / %s | %s / %s / %s | %s / %s / %s | %s / %s / %s |\n' \
            "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h" "$k" "$l" "$m" "$n"
        printf '\nTarget: condo cold start p50 <= 5 ms, p99 <= 20 ms (%s first requests, curl time_total).\n' "$COLD_TENANTS"
        ((FAILED)) && printf '\n**Some requests failed; see the warnings of the run.**\n'
    } >"$md"
    cat "$md"
    log "written $md"
    csv_rows
}

# The figures as CSV rows for bench/run (memory in the RSS column, latencies in p50/p99).
csv_rows() {
    local mib a b c
    mib() { awk -v kb="$1" 'BEGIN {printf "%.1f", kb / 1024}'; }
    csv_row condo "$SCALE_TENANTS idle tenants" 1 "" "" "" "" "$(mib "${RESULT[condo_rss]}")" 0
    csv_row "nginx+php-fpm" "$SCALE_TENANTS idle tenants" 1 "" "" "" "" \
        "$(mib $((RESULT[fpm_rss] + RESULT[nginx_rss])))" 0
    read -r a b c <<<"${RESULT[condo_cold_static]}"
    csv_row condo "cold start static" 1 "" "$a" "$b" "" "" "$FAILED"
    read -r a b c <<<"${RESULT[condo_warm_static]}"
    csv_row condo "warm static" 1 "" "$a" "$b" "" "" "$FAILED"
    read -r a b c <<<"${RESULT[condo_cold_php]}"
    csv_row condo "cold start PHP" 1 "" "$a" "$b" "" "" "$FAILED"
    read -r a b c <<<"${RESULT[fpm_cold_php]}"
    csv_row "nginx+php-fpm" "cold start PHP" 1 "" "$a" "$b" "" "" "$FAILED"
}

main() {
    [[ $(id -u) == 0 ]] || die "run as root (creates users, starts servers that switch uid)"
    TMP=$(mktemp -d /tmp/condo-scale.XXXXXX)
    chmod 0755 "$TMP"
    trap cleanup EXIT INT TERM
    CONDO_BIN=${CONDO_BIN:-$REPO_DIR/target/release/condo}
    install_deps
    command -v bc >/dev/null || apt_install bc
    build_condo || die "no condo binary"
    make_tenants
    bench_condo
    bench_fpm
    report
}

main "$@"
