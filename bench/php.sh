#!/usr/bin/env bash
# PHP benchmark: a 13-byte "hello" script served by condo (FastCGI route with php-cgi,
# pass and proxy handover), nginx + PHP-FPM (one pool per tenant) and Apache 2.4 with
# mpm-itk + mod_php (one uid per vhost).
#
# Run as root on a Debian machine:   sudo bench/php.sh
# Quick smoke run:                   sudo BENCH_DURATION=2s BENCH_RUNS=1 bench/php.sh
# See bench/README.md for what is measured and how to read the table.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
RESULTS_DIR=$SCRIPT_DIR/results

# ---- knobs (environment; the common ones are in lib.sh) ----------------------------
BENCH_SERVERS=${BENCH_SERVERS:-"condo-pass condo-proxy nginx itk"}
CONDO_PASS_PORT=${CONDO_PASS_PORT:-18081}
CONDO_PROXY_PORT=${CONDO_PROXY_PORT:-18082}
NGINX_PORT=${NGINX_PORT:-18083}
ITK_PORT=${ITK_PORT:-18084}
BENCH_PHP_PROCS=${BENCH_PHP_PROCS:-4}   # condo processes_max = php-fpm pm.max_children

SERVERS_ALL=(condo-pass condo-proxy nginx itk)
WORKLOADS=("hello.php keep-alive" "hello.php close")
HELLO_PHP='<?php echo "Hello, world\n";'
HELLO_BODY=$'Hello, world\n'   # 13 bytes
PROBE_PATH=/hello.php          # what "the server answers" means

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$SCRIPT_DIR/lib.sh"

PHP_FPM=""      # /usr/sbin/php-fpmX.Y
LIBPHP=""       # /usr/lib/apache2/modules/libphpX.Y.so

# ---- 1. packages ------------------------------------------------------------------
find_php() {
    PHP_FPM=$(find /usr/sbin -maxdepth 1 -name 'php-fpm*' -type f 2>/dev/null | sort -V | tail -n 1)
    LIBPHP=$(find /usr/lib/apache2/modules -maxdepth 1 -name 'libphp*.so' 2>/dev/null | sort -V | tail -n 1)
}

install_deps() {
    local need=()
    find_php
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
    [[ -x /usr/sbin/apache2 ]] || need+=(apache2)
    [[ -e /usr/lib/apache2/modules/mpm_itk.so ]] || need+=(libapache2-mpm-itk)
    [[ -n $LIBPHP ]] || need+=(libapache2-mod-php)
    command -v php-cgi >/dev/null || need+=(php-cgi)
    [[ -n $PHP_FPM ]] || need+=(php-fpm)
    command -v wrk >/dev/null || need+=(wrk)
    command -v curl >/dev/null || need+=(curl)
    [[ -e /etc/mime.types ]] || need+=(media-types)    # Apache's TypesConfig
    command -v ss >/dev/null || need+=(iproute2)
    command -v ps >/dev/null || need+=(procps)
    apt_install "${need[@]}"
    find_php
    [[ -n $PHP_FPM ]] || die "no /usr/sbin/php-fpm* after installing php-fpm"
    [[ -n $LIBPHP ]] || die "no /usr/lib/apache2/modules/libphp*.so after installing libapache2-mod-php"
    command -v php-cgi >/dev/null || die "no php-cgi in PATH after installing php-cgi"
    # Servers we did not start are left alone, but they are worth knowing about.
    local other
    other=$(ps -eo pid=,user=,args= | awk '$3 ~ /(^|\/)(php-fpm|apache2|nginx)/' || true)
    if [[ -n $other ]]; then
        warn "php-fpm/apache2/nginx processes that this script did not start are running" \
            "(left alone; they share the CPU):"
        printf '    %s\n' "$other" >&2
        NOTES+=("php-fpm/apache2/nginx processes not started by the script were running during the benchmark")
    fi
}

# ---- 3. users and docroots --------------------------------------------------------
make_tree() {
    # nginx's workers can read every tenant's files (its try_files looks at them);
    # PHP itself runs as the tenant in every setup.
    make_bench_accounts

    local t u
    for t in a b; do
        u=condo-bench-$t
        mkdir -p "$TMP/$t/www"
        printf '%s' "$HELLO_PHP" >"$TMP/$t/www/hello.php"
        # Which tenant's docroot and which uid answered (no posix extension needed).
        # shellcheck disable=SC2016 # PHP code, not shell
        printf '<?php preg_match("/^Uid:\\s+(\\d+)/m", file_get_contents("/proc/self/status"), $m); echo "%s ", $m[1], "\\n";' \
            "$t" >"$TMP/$t/www/whoami.php"
        chown -R "$u:$u" "$TMP/$t"
        chmod 0750 "$TMP/$t" "$TMP/$t/www"
        chmod 0640 "$TMP/$t/www/hello.php" "$TMP/$t/www/whoami.php"
    done
    printf '%s' "$HELLO_BODY" >"$TMP/hello.expected"
    [[ $(stat -c %s "$TMP/hello.expected") == 13 ]] || die "the expected body is not 13 bytes"
    mkdir -p "$TMP/sites" "$TMP/nginx/logs" "$TMP/fpm" "$TMP/apache/logs" "$TMP/apache/run"
}

# ---- hooks for lib.sh -------------------------------------------------------------
# After a server answers: does each Host run its own tenant's script as its own uid?
check_vhosts() {
    local name=$1 port=$2 t got want
    for t in a b; do
        want="$t $(id -u "condo-bench-$t")"
        got=$(curl -s --max-time 5 -H "Host: $t.test" "http://127.0.0.1:$port/whoami.php" | head -c 200) || true
        if [[ $got != "$want" ]]; then
            warn "$name: Host $t.test /whoami.php said '$got', expected '$want'"
            NOTES+=("**$name: Host $t.test /whoami.php said '$got', expected '$want'** (vhost routing or uid wrong)")
            FAILED=1
        fi
    done
}

expected_file() { printf '%s\n' "$TMP/hello.expected"; }

condo_site_extra() {
    cat <<EOF

[[site.route]]
suffix = ".php"
handler = "fastcgi"
command = ["php-cgi"]
processes_max = $BENCH_PHP_PROCS
EOF
}

# ---- 4. servers -------------------------------------------------------------------
# PHP-FPM: one master (root), one pool per tenant running as the tenant, sockets that
# only nginx's worker account can connect to.
start_fpm() {
    local pid t i
    cat >"$TMP/fpm/php-fpm.conf" <<EOF
[global]
pid = $TMP/fpm/php-fpm.pid
error_log = $TMP/fpm/error.log
daemonize = no
EOF
    for t in a b; do
        cat >>"$TMP/fpm/php-fpm.conf" <<EOF

[$t]
user = condo-bench-$t
group = condo-bench-$t
listen = $TMP/fpm/$t.sock
listen.owner = $USER_W
listen.group = $USER_W
listen.mode = 0660
; as many processes as condo's processes_max, all started up front
pm = static
pm.max_children = $BENCH_PHP_PROCS
; condo's default max_requests
pm.max_requests = 10000
EOF
    done
    log "starting $PHP_FPM"
    setsid "$PHP_FPM" -F -y "$TMP/fpm/php-fpm.conf" >"$TMP/fpm/stderr.log" 2>&1 </dev/null &
    pid=$!
    SERVER_PID[php-fpm]=$pid
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || break
        [[ -S $TMP/fpm/a.sock && -S $TMP/fpm/b.sock ]] && return 0
        sleep 0.1
    done
    warn "php-fpm FAILED to start; its logs:"
    cat "$TMP/fpm/stderr.log" "$TMP/fpm/error.log" 2>/dev/null | tail -n 50 >&2
    stop_server php-fpm
    return 1
}

start_nginx() {
    local pid rc=0 t
    port_busy "$NGINX_PORT" && { warn "port $NGINX_PORT is already in use"; return 1; }
    start_fpm || return 1
    cat >"$TMP/nginx/nginx.conf" <<EOF
# nginx's workers run as one account ($USER_W); PHP runs in one FPM pool per tenant.
user $USER_W;
worker_processes auto;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    keepalive_timeout 65;
    keepalive_requests 100000;   # default 1000 would cut wrk's keep-alive connections
    access_log $TMP/nginx/logs/access.log combined;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
EOF
    for t in a b; do
        cat >>"$TMP/nginx/nginx.conf" <<EOF
    server {
        listen 127.0.0.1:$NGINX_PORT;
        server_name $t.test;
        root $TMP/$t/www;
        location ~ \\.php\$ {
            try_files \$uri =404;
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME \$document_root\$fastcgi_script_name;
            fastcgi_pass unix:$TMP/fpm/$t.sock;
        }
    }
EOF
    done
    echo "}" >>"$TMP/nginx/nginx.conf"
    log "starting nginx"
    setsid nginx -p "$TMP/nginx/" -e "$TMP/nginx/logs/error.log" -c "$TMP/nginx/nginx.conf" \
        -g 'daemon off;' >"$TMP/nginx/logs/stderr.log" 2>&1 </dev/null &
    pid=$!
    SERVER_PID[nginx]=$pid
    wait_ready "$NGINX_PORT" a.test "$pid" 10 || rc=$?
    if ((rc != 0)); then
        warn "nginx + php-fpm FAILED to answer; their logs:"
        cat "$TMP/nginx/logs/stderr.log" "$TMP/nginx/logs/error.log" \
            "$TMP/fpm/stderr.log" "$TMP/fpm/error.log" 2>/dev/null | tail -n 50 >&2
        stop_server nginx
        stop_server php-fpm
        return 1
    fi
    check_vhosts nginx "$NGINX_PORT"
    show_procs nginx "$pid"
    show_procs php-fpm "${SERVER_PID[php-fpm]}"
}


# Apache mpm-itk (lib.sh's start_itk) with mod_php for .php files. mod_php reads
# Debian's /etc/php/X.Y/apache2/php.ini as usual.
start_itk_php() {
    ITK_LABEL="mpm-itk + mod_php"
    printf -v ITK_EXTRA '%s\n%s\n%s\n%s' \
        "LoadModule php_module $LIBPHP" \
        '<FilesMatch "\.php$">' \
        '    SetHandler application/x-httpd-php' \
        '</FilesMatch>'
    start_itk
}

# ---- 6. report --------------------------------------------------------------------
HEADER=""
machine_header() {
    local v sapi oc=()
    v=${PHP_FPM##*/php-fpm}   # X.Y; Debian's php-cgi, php-fpm and mod_php come from one php-defaults
    for sapi in cgi fpm apache2; do
        if compgen -G "/etc/php/$v/$sapi/conf.d/*opcache.ini" >/dev/null; then
            oc+=("$sapi on")
        else
            oc+=("$sapi off")
        fi
    done
    HEADER=$(
        header_common
        echo "- php: $(php-cgi -n -v 2>/dev/null | head -n1 | sed 's/ (cgi-fcgi).*//'), $(basename "$PHP_FPM"), $(basename "$LIBPHP"); opcache: ${oc[*]}"
        echo "- PHP processes per tenant: condo processes_max = php-fpm pm.max_children = $BENCH_PHP_PROCS (pm = static)"
        header_load
    )
}

report() {
    local w
    {
        echo "# PHP hello: condo FastCGI vs nginx + PHP-FPM vs Apache mpm-itk + mod_php"
        echo
        echo "$HEADER"
        echo
        echo "| workload | condo-pass rps | p99 | condo-proxy rps | p99 | nginx+php-fpm rps | p99 | mpm-itk+mod_php rps | p99 | pass/(nginx+fpm) | pass/itk |"
        echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
        for w in "${WORKLOADS[@]}"; do
            printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$w" \
                "$(fmt_cell "condo-pass|$w")" "$(fmt_cell "condo-proxy|$w")" \
                "$(fmt_cell "nginx|$w")" "$(fmt_cell "itk|$w")" \
                "$(ratio "condo-pass|$w" "nginx|$w")" "$(ratio "condo-pass|$w" "itk|$w")"
        done
        echo
        echo "hello.php = \`$HELLO_PHP\` (13-byte body); keep-alive = wrk's persistent connections," \
            "close = \`Connection: close\` on every request (a new TCP connection per request)." \
            "rps = requests/s of the best run, p99 = its 99th-percentile latency. ⚠ = the run had" \
            "non-2xx responses or socket errors (details below); ratios are of rps."
        echo "Servers: condo runs php-cgi as the tenant inside the tenant's worker" \
            "(\`handler = \"fastcgi\"\`, processes_max $BENCH_PHP_PROCS); nginx (keepalive_requests 100000," \
            "workers as one account) passes \`.php\` to one PHP-FPM pool per tenant over a unix socket" \
            "(pm = static, $BENCH_PHP_PROCS children, running as the tenant); Apache 2.4 prefork + mpm-itk" \
            "with mod_php in the server process, one AssignUserID per vhost, MaxKeepAliveRequests 0." \
            "All servers write an access log. wrk runs on the same cores as the servers and PHP."
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
    [[ $BENCH_PHP_PROCS =~ ^[1-9][0-9]*$ ]] || die "BENCH_PHP_PROCS must be a positive integer"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    install_deps
    open_results php

    if want_condo; then CONDO_BIN=${CONDO_BIN:-$REPO_DIR/target/release/condo}; fi
    machine_header
    echo "$HEADER"
    raw "$HEADER"

    prepare_condo
    make_tree

    run_condo_columns
    run_column nginx "$NGINX_PORT" start_nginx php-fpm
    run_column itk "$ITK_PORT" start_itk_php

    report
    if ((FAILED)); then
        warn "some servers or checks FAILED (see 'Problems' above); exit status 1"
        return 1
    fi
}

main "$@"
