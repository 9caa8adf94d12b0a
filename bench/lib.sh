# Shared code of the condo benchmarks (static.sh, php.sh). Sourced, not run.
#
# The sourcing script sets SCRIPT_DIR, REPO_DIR, RESULTS_DIR, BENCH_SERVERS, the ports
# (CONDO_PASS_PORT, CONDO_PROXY_PORT), SERVERS_ALL, WORKLOADS and PROBE_PATH, and defines
# these hooks:
#   check_vhosts NAME PORT   after a server answers: does each Host reach its own tenant?
#   expected_file FILE       the file holding the exact body expected for /FILE
#   condo_site_extra TENANT  (optional) more TOML for that tenant's condo site file
# shellcheck shell=bash
# shellcheck disable=SC2034 # variables are used by the sourcing scripts

# ---- knobs (environment) ----------------------------------------------------------
BENCH_DURATION=${BENCH_DURATION:-10s}   # wrk -d, per run
BENCH_CONNS=${BENCH_CONNS:-50}          # wrk -c
BENCH_THREADS=${BENCH_THREADS:-2}       # wrk -t
BENCH_RUNS=${BENCH_RUNS:-2}             # measured runs per cell; the best one is reported
BENCH_WARMUP=${BENCH_WARMUP:-2s}        # one unrecorded wrk run before each cell; 0 = none
BENCH_CSV=${BENCH_CSV:-}                # set (by bench/run): every measured run is appended here
BENCH_SUITE=${BENCH_SUITE:-}            # the first CSV column (set by each script)
CONDO_BIN_FROM_ENV=${CONDO_BIN:-}                 # set: use this binary, do not build
CONDO_START_TIMEOUT=${CONDO_START_TIMEOUT:-20}   # seconds until condo must answer

# Throw-away accounts. The GECOS marker lets a later run remove leftovers of a run
# that was killed before its cleanup could run, and nothing else.
USER_A=condo-bench-a        # tenant a
USER_B=condo-bench-b        # tenant b
USER_D=condo-bench-d        # condo's dispatcher
USER_W=condo-bench-w        # nginx workers (member of both tenant groups); itk default user
USER_MARK="condo bench (temporary)"

# ---- state ------------------------------------------------------------------------
TMP=""                  # temp dir with docroots, configs, logs
CREATED_USERS=()        # accounts this run created (deleted at exit)
POLICY_RC_CREATED=0     # did we write /usr/sbin/policy-rc.d?
declare -A SERVER_PID=()        # name -> pid of the process we started (a session leader)
declare -A RPS=() P50=() P99=() CPU=() RSS=() ERRS=() CELL=()   # key "server|workload"
declare -A ALLRUNS=()           # key -> per-run summary lines
NOTES=()                # printed under the table
FAILED=0                # exit status 1 at the end if something did not work
RAW=""                  # raw wrk log in results/
MD=""                   # the Markdown report in results/

# ---- small helpers ----------------------------------------------------------------
log() { printf '==> %s\n' "$*" >&2; }
warn() { printf '!!! %s\n' "$*" >&2; }
die() { warn "$*"; exit 1; }
want() { [[ " $BENCH_SERVERS " == *" $1 "* ]]; }
want_condo() { want condo-pass || want condo-proxy; }
raw() { [[ -z $RAW ]] || printf '%s\n' "$@" >>"$RAW"; }

# A process is alive if it exists and is not a zombie (kill -0 succeeds on zombies).
alive() {
    local st
    st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ -n $st && $st != Z* ]]
}

# Seconds in a wrk duration ("10s", "2m", "1h", "30").
dur_secs() {
    local d=$1
    [[ $d =~ ^([0-9]+)(s|m|h)?$ ]] || die "cannot parse duration '$d' (use e.g. 10s, 2m)"
    case ${BASH_REMATCH[2]} in
        m) echo $((BASH_REMATCH[1] * 60)) ;;
        h) echo $((BASH_REMATCH[1] * 3600)) ;;
        *) echo "${BASH_REMATCH[1]}" ;;
    esac
}

# wrk prints latencies as 812.00us / 1.23ms / 2.01s / 1.50m; turn them into ms.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        else if (u != "ms") { print "?"; exit }
        printf "%.2f", n }'
}

port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# ---- 1. packages ------------------------------------------------------------------
# apt_install PKG...: install from Debian with --no-install-recommends.
apt_install() {
    (($#)) || return 0
    log "installing: $*"
    # Keep the packages from starting their Debian services: we run our own instances.
    # An existing policy-rc.d (e.g. in a container) is left as it is.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
    if ((POLICY_RC_CREATED)); then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=0
    fi
}

# ---- 2. condo binary --------------------------------------------------------------
CONDO_OK=0                      # condo binary is there
CONDO_PASS_UP=0 CONDO_PROXY_UP=0  # its listeners answered 200
CONDO_WHY_PASS="" CONDO_WHY_PROXY=""
build_condo() {
    if [[ -n ${CONDO_BIN_FROM_ENV:-} ]]; then
        [[ -x $CONDO_BIN ]] || { warn "CONDO_BIN=$CONDO_BIN is not an executable"; return 1; }
        log "using CONDO_BIN=$CONDO_BIN (not building)"
        return 0
    fi
    command -v cargo >/dev/null || PATH=$PATH:${HOME:-/root}/.cargo/bin
    command -v cargo >/dev/null || { warn "cargo not found; set CONDO_BIN"; return 1; }
    log "cargo build --release (log: $TMP/cargo-build.log)"
    if ! (cd "$REPO_DIR" && timeout 1800 cargo build --release) >"$TMP/cargo-build.log" 2>&1; then
        warn "cargo build --release FAILED; last 50 lines:"
        tail -n 50 "$TMP/cargo-build.log" >&2
        raw "=== cargo build --release failed; last 50 lines: ===" "$(tail -n 50 "$TMP/cargo-build.log")"
        return 1
    fi
    [[ -x $CONDO_BIN ]] || { warn "build succeeded but $CONDO_BIN is missing"; return 1; }
}

# ---- 3. users and docroots --------------------------------------------------------
# make_user NAME [regular]: a throw-away system account, or with "regular" a normal one
# (uid/gid from 1000 up: a thousand tenants do not fit the system range).
make_user() {
    local name=$1 kind=(--system)
    [[ ${2:-} == regular ]] && kind=()
    if getent passwd "$name" >/dev/null; then
        if [[ $(getent passwd "$name" | cut -d: -f5) == "$USER_MARK" ]]; then
            warn "removing leftover account $name from an earlier interrupted run"
            userdel "$name" || die "cannot remove leftover $name (processes still running as it?)"
            if getent group "$name" >/dev/null; then groupdel "$name" || true; fi
        else
            die "user $name exists and was not made by this script; not touching it"
        fi
    fi
    if getent group "$name" >/dev/null; then
        die "group $name exists without its user; remove it or pick other names"
    fi
    useradd "${kind[@]}" --no-create-home --shell /usr/sbin/nologin --user-group \
        --comment "$USER_MARK" "$name"
    CREATED_USERS+=("$name")
}

# The four accounts every suite uses: tenants a and b, condo's dispatcher, and the
# shared web server account, in both tenant groups (the shared-uid model: nginx's
# workers can read every tenant's files).
make_bench_accounts() {
    make_user "$USER_A"
    make_user "$USER_B"
    make_user "$USER_D"
    make_user "$USER_W"
    usermod -a -G "$USER_A,$USER_B" "$USER_W"
}

# Both tenants' docroots, $TMP/{a,b}/www, each with small.txt ("Hello, world\n"), owned
# by the tenant: dirs 0750, files 0640.
make_small_docroots() {
    local t
    for t in a b; do
        mkdir -p "$TMP/$t/www"
        printf 'Hello, world\n' >"$TMP/$t/www/small.txt"
        chown -R "condo-bench-$t:condo-bench-$t" "$TMP/$t"
        chmod 0750 "$TMP/$t" "$TMP/$t/www"
        chmod 0640 "$TMP/$t/www/small.txt"
    done
}

# ---- process handling -------------------------------------------------------------
# Every server is started with setsid, so the pid we get from $! leads its own session
# and process group; stopping it reaches its children and nothing else.
session_pids() { ps -o pid= -s "$1" 2>/dev/null | tr -d ' ' | grep -v '^$' || true; }

stop_server() {
    local name=$1 pid=${SERVER_PID[$1]:-} p i
    [[ -n $pid ]] || return 0
    unset 'SERVER_PID[$name]'
    if alive "$pid"; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
    fi
    for ((i = 0; i < 100; i++)); do           # up to 10 s for a graceful stop
        local left=0
        for p in $(session_pids "$pid"); do alive "$p" && left=1; done
        ((left)) || break
        sleep 0.1
    done
    for p in $(session_pids "$pid"); do
        if alive "$p"; then
            warn "$name: pid $p still running after 10 s, sending KILL"
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    wait "$pid" 2>/dev/null || true
}

# Processes still running as one of our throw-away accounts were started by this run
# (a server that left its session, say); stop them by pid so userdel can work.
stop_account_leftovers() {
    local u p
    for u in "${CREATED_USERS[@]}"; do
        # Zombies are already dead: orphans wait for init to reap them.
        for p in $(ps -o pid=,stat= -u "$u" 2>/dev/null | awk '$2 !~ /^Z/ {print $1}' || true); do
            warn "pid $p still runs as $u ($(ps -o stat=,args= -p "$p" 2>/dev/null)); sending KILL"
            kill -KILL "$p" 2>/dev/null || true
        done
    done
    sleep 0.2
}

cleanup() {
    local rc=$? name u
    set +e
    trap - EXIT INT TERM
    for name in "${!SERVER_PID[@]}"; do stop_server "$name"; done
    ((POLICY_RC_CREATED)) && rm -f /usr/sbin/policy-rc.d
    if ((${#CREATED_USERS[@]})); then
        stop_account_leftovers
        for u in "${CREATED_USERS[@]}"; do
            userdel "$u" 2>/dev/null || warn "userdel $u failed"
            getent group "$u" >/dev/null && { groupdel "$u" || warn "groupdel $u failed"; }
        done
    fi
    if [[ -n $TMP && -d $TMP ]]; then
        if ((KEEP_TMP_ON_FAIL)) && ((rc != 0 || FAILED)); then
            warn "keeping $TMP (BENCH_KEEP_TMP=1)"
        else
            rm -rf -- "$TMP"
        fi
    fi
    exit "$rc"
}
KEEP_TMP_ON_FAIL=${BENCH_KEEP_TMP:-0}

# probe PORT HOST: does http://127.0.0.1:PORT$PROBE_PATH answer 200 for HOST?
# PROBE_MSG says what curl saw.
PROBE_MSG=""
probe() {
    local code rc=0
    code=$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' -H "Host: $2" \
        "http://127.0.0.1:$1$PROBE_PATH") || rc=$?
    if ((rc != 0)); then PROBE_MSG="no answer (curl exit status $rc)"; else PROBE_MSG="HTTP $code"; fi
    [[ $rc == 0 && $code == 200 ]]
}

# Wait until PORT answers 200 for HOST, at most SECS seconds.
# Returns 2 if the process died first, 1 on timeout.
wait_ready() {
    local port=$1 host=$2 pid=$3 secs=$4 deadline
    deadline=$((SECONDS + secs))
    while ((SECONDS < deadline)); do
        alive "$pid" || return 2
        probe "$port" "$host" && return 0
        sleep 0.2
    done
    return 1
}

# After a server answers: does each vhost serve its own tenant's files?
show_procs() {
    raw "--- processes of $1 (user, group) ---"
    raw "$(ps -o pid,ppid,user:16,group:16,args -s "$2" 2>/dev/null || true)"
}

# ---- 4. servers -------------------------------------------------------------------
condo_site_extra() { :; }   # default hook: nothing more in the site files

# condo with two listeners, pass and proxy; the site files for a.test and b.test.
start_condo() {
    local pid rc=0 port
    for port in "$CONDO_PASS_PORT" "$CONDO_PROXY_PORT"; do
        if port_busy "$port"; then
            warn "port $port is already in use"
            CONDO_WHY_PASS="port $port already in use" CONDO_WHY_PROXY="port $port already in use"
            return 1
        fi
    done
    cat >"$TMP/condo.toml" <<EOF
[server]
listen = [{ addr = "127.0.0.1:$CONDO_PASS_PORT", handover = "pass" }, { addr = "127.0.0.1:$CONDO_PROXY_PORT", handover = "proxy" }]
user = "$USER_D"
uid_range = [100, 60000]
sites = "sites/*.toml"
log_dir = "$TMP/log"
run_dir = "$TMP/run"
${CONDO_WORKER_THREADS:+worker_threads = $CONDO_WORKER_THREADS}

[defaults]
${CONDO_DEFAULTS:-}

[tenant.a]
user = "$USER_A"

[tenant.b]
user = "$USER_B"
EOF
    local t
    for t in a b; do
        {
            printf '[[site]]\nname = "%s.test"\ntenant = "%s"\nroot = "%s"\n' "$t" "$t" "$TMP/$t/www"
            condo_site_extra "$t"
        } >"$TMP/sites/$t.toml"
    done
    # condo's own validation first: its diagnostics explain most start failures.
    if ! timeout 30 "$CONDO_BIN" check -c "$TMP/condo.toml" >"$TMP/condo-check.log" 2>&1; then
        warn "condo check -c $TMP/condo.toml reports problems:"
        sed 's/^/    /' "$TMP/condo-check.log" | tail -n 50 >&2
        raw "=== condo check failed: ===" "$(tail -n 50 "$TMP/condo-check.log")"
    fi
    log "starting condo: $CONDO_BIN serve -c $TMP/condo.toml"
    setsid "$CONDO_BIN" serve -c "$TMP/condo.toml" >"$TMP/condo.stderr.log" 2>&1 </dev/null &
    pid=$!
    SERVER_PID[condo]=$pid
    # Both listeners get the same deadline; each handover mode is judged on its own.
    local deadline=$((SECONDS + CONDO_START_TIMEOUT)) pass_msg="" proxy_msg="" died=0
    CONDO_PASS_UP=0 CONDO_PROXY_UP=0
    while ((SECONDS < deadline)); do
        alive "$pid" || { died=1; break; }
        if ((!CONDO_PASS_UP)); then
            if probe "$CONDO_PASS_PORT" a.test; then CONDO_PASS_UP=1; else pass_msg=$PROBE_MSG; fi
        fi
        if ((!CONDO_PROXY_UP)); then
            if probe "$CONDO_PROXY_PORT" a.test; then CONDO_PROXY_UP=1; else proxy_msg=$PROBE_MSG; fi
        fi
        ((CONDO_PASS_UP && CONDO_PROXY_UP)) && break
        sleep 0.2
    done
    if ((!CONDO_PASS_UP || !CONDO_PROXY_UP)); then
        if ((died)); then
            warn "condo FAILED: the process exited (listeners up: pass $CONDO_PASS_UP, proxy $CONDO_PROXY_UP)"
        fi
        ((CONDO_PASS_UP)) || warn "condo pass listener FAILED: no 200 for 'curl -H \"Host: a.test\" http://127.0.0.1:$CONDO_PASS_PORT$PROBE_PATH' within ${CONDO_START_TIMEOUT}s (last try: ${pass_msg:-none})"
        ((CONDO_PROXY_UP)) || warn "condo proxy listener FAILED: no 200 for 'curl -H \"Host: a.test\" http://127.0.0.1:$CONDO_PROXY_PORT$PROBE_PATH' within ${CONDO_START_TIMEOUT}s (last try: ${proxy_msg:-none})"
        if ((died)); then
            CONDO_WHY_PASS="condo exited" CONDO_WHY_PROXY="condo exited"
        else
            CONDO_WHY_PASS="no 200 from condo ($pass_msg)" CONDO_WHY_PROXY="no 200 from condo ($proxy_msg)"
        fi
        warn "last 50 lines of $TMP/condo.stderr.log:"
        tail -n 50 "$TMP/condo.stderr.log" | sed 's/^/    /' >&2
        raw "=== condo did not answer on all listeners; its log: ===" "$(tail -n 50 "$TMP/condo.stderr.log")"
        if ((died || (!CONDO_PASS_UP && !CONDO_PROXY_UP))); then
            stop_server condo
            return 1
        fi
    fi
    ((CONDO_PASS_UP)) && check_vhosts condo-pass "$CONDO_PASS_PORT"
    ((CONDO_PROXY_UP)) && check_vhosts condo-proxy "$CONDO_PROXY_PORT"
    show_procs condo "$pid"   # after both vhosts were asked: workers may start lazily
    return 0
}

# ---- 5. measuring -----------------------------------------------------------------
# verify URL MODE FILE: HTTP 200 and the exact body, before benchmarking it.
VERIFY_MSG=""
verify() {
    local url=$1 mode=$2 file=$3 code size hdr=()
    [[ $mode == close ]] && hdr=(-H 'Connection: close')
    code=$(curl -s --max-time 5 -o "$TMP/body" -w '%{http_code}' -H 'Host: a.test' "${hdr[@]}" "$url") || true
    size=$(stat -c %s "$TMP/body" 2>/dev/null || echo 0)
    VERIFY_MSG="HTTP ${code:-none}, $size bytes"
    [[ $code == 200 ]] && cmp -s "$TMP/body" "$(expected_file "$file")"
}

# CPU time of the whole machine (all cores), in clock ticks, from /proc/stat.
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }

# Resident memory (MiB) of every process of the servers now running (their sessions).
servers_rss_mb() {
    local name p kb=0 r
    for name in "${!SERVER_PID[@]}"; do
        for p in $(session_pids "${SERVER_PID[$name]}"); do
            r=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
            kb=$((kb + ${r:-0}))
        done
    done
    awk -v kb="$kb" 'BEGIN {printf "%.1f", kb / 1024}'
}

# measure_load CMD...: run the load generator CMD and print its output, then two lines:
# "bench-cpu: N" (cores the servers used: the machine's busy time during the run minus
# the load generator's own, over the wall time) and "bench-rss: N" (the servers' MiB at
# the end of the run). Client and servers share the cores, so the first says who had
# them.
measure_load() {
    local t0 t1 b0 b1 out times hz
    hz=$(getconf CLK_TCK)
    b0=$(busy_ticks)
    t0=$(date +%s.%N)
    out=$( { TIMEFORMAT='%U %S'; time "$@" 2>&1; } 2>"$TMP/load.times" ) || true
    t1=$(date +%s.%N)
    b1=$(busy_ticks)
    times=$(tail -n 1 "$TMP/load.times")
    printf '%s\n' "$out"
    awk -v b="$((b1 - b0))" -v hz="$hz" -v t="$times" -v w0="$t0" -v w1="$t1" 'BEGIN {
        split(t, c, " "); wall = w1 - w0; if (wall <= 0) wall = 1
        cores = (b / hz - c[1] - c[2]) / wall; if (cores < 0) cores = 0
        printf "bench-cpu: %.2f\n", cores }'
    printf 'bench-rss: %s\n' "$(servers_rss_mb)"
}

# One wrk run; prints its output. Bounded by wrk's own -d and by timeout.
# MODE: keep-alive, close (Connection: close: a new connection per request), or
# alternate (keep-alive, Host switching between a.test and b.test on the connections).
run_wrk() {
    local url=$1 mode=$2 dur=$3 limit hdr=()
    [[ $mode == close ]] && hdr=(-H 'Connection: close')
    [[ $mode == alternate ]] && hdr=(-s "$SCRIPT_DIR/alternate.lua")
    limit=$(($(dur_secs "$dur") + 30))
    measure_load timeout --kill-after=5 "$limit" \
        wrk -t"$BENCH_THREADS" -c"$BENCH_CONNS" -d"$dur" --latency \
        -H 'Host: a.test' "${hdr[@]}" "$url" || echo "wrk exited with status $?"
}

# Parse one wrk output: sets W_RPS, W_P50 and W_P99 (ms), W_CPU (cores), W_RSS (MiB),
# W_NON2XX, W_SOCK (sum), W_SOCKTXT.
parse_wrk() {
    local out=$1 lat
    W_RPS=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    lat=$(awk '$1 == "50%" {print $2; exit}' <<<"$out")
    W_P50=$([[ -n $lat ]] && to_ms "$lat" || echo "?")
    lat=$(awk '$1 == "99%" {print $2; exit}' <<<"$out")
    W_P99=$([[ -n $lat ]] && to_ms "$lat" || echo "?")
    W_CPU=$(awk '/^bench-cpu:/ {print $2}' <<<"$out")
    W_RSS=$(awk '/^bench-rss:/ {print $2}' <<<"$out")
    W_NON2XX=$(awk -F: '/Non-2xx or 3xx responses/ {gsub(/ /, "", $2); print $2}' <<<"$out")
    W_NON2XX=${W_NON2XX:-0}
    W_SOCKTXT=$(sed -n 's/^ *Socket errors: *//p' <<<"$out")
    W_SOCK=0
    if [[ -n $W_SOCKTXT ]]; then
        W_SOCK=$(grep -oE '[0-9]+' <<<"$W_SOCKTXT" | awk '{s += $1} END {print s + 0}')
    fi
}

# csv_row SERVER WORKLOAD RUN RPS P50 P99 CPU RSS ERRORS: one measured run, for bench/run.
csv_row() {
    [[ -n $BENCH_CSV ]] || return 0
    local IFS=,
    printf '%s\n' "${BENCH_SUITE:-?},$*" >>"$BENCH_CSV"
}

bench_cell() {
    local srv=$1 port=$2 file=$3 mode=$4 key url out r best=-1 best_clean=-1 pick
    key="$srv|$file $mode"
    url="http://127.0.0.1:$port/$file"
    log "$srv  $file  $mode"
    raw "" "################ $srv | $file | $mode | $url"
    if ! verify "$url" "$mode" "$file"; then
        warn "$srv $file $mode: verification FAILED ($VERIFY_MSG); not benchmarked"
        raw "verification FAILED: $VERIFY_MSG"
        CELL[$key]="verify failed: $VERIFY_MSG"
        FAILED=1
        return 0
    fi
    raw "verified: $VERIFY_MSG"
    if [[ $BENCH_WARMUP != 0 ]]; then
        out=$(run_wrk "$url" "$mode" "$BENCH_WARMUP")
        parse_wrk "$out"
        raw "--- warm-up ($BENCH_WARMUP, not counted): ${W_RPS:-?} req/s"
    fi
    local rps=() p50=() p99=() cpu=() rss=() errs=() errtxt=() parsed=()
    for ((r = 1; r <= BENCH_RUNS; r++)); do
        out=$(run_wrk "$url" "$mode" "$BENCH_DURATION")
        raw "--- run $r" "$out"
        parse_wrk "$out"
        local n=$((W_NON2XX + W_SOCK)) txt="non-2xx $W_NON2XX; socket errors: ${W_SOCKTXT:-none}"
        if [[ -z $W_RPS ]]; then   # wrk failed or was cut off: that is an error too
            warn "    could not parse wrk's output (see the raw log)"
            n=$((n + 1)) txt="wrk gave no result ($(tail -n 1 <<<"$out"))"
        fi
        rps+=("${W_RPS:-0}")
        parsed+=("$([[ -n $W_RPS ]] && echo 1 || echo 0)")
        p99+=("$W_P99")
        p50+=("$W_P50")
        cpu+=("${W_CPU:-?}")
        rss+=("${W_RSS:-?}")
        errs+=("$n")
        errtxt+=("$txt")
        ALLRUNS[$key]+="| $srv | $file $mode | $r | ${W_RPS:-none} | $W_P50 ms | $W_P99 ms | ${W_CPU:-?} | ${W_RSS:-?} MiB | $W_NON2XX | ${W_SOCKTXT:-0} |"$'\n'
        csv_row "$srv" "$file $mode" "$r" "${W_RPS:-0}" "$W_P50" "$W_P99" "${W_CPU:-}" "${W_RSS:-}" "$n"
        log "    run $r: ${W_RPS:-?} req/s, p50 $W_P50 ms, p99 $W_P99 ms, ${W_CPU:-?} cores, ${W_RSS:-?} MiB, errors $n"
    done
    # The best run: highest req/s, preferring runs without errors (an error answer can
    # be faster than a real one).
    for ((r = 0; r < BENCH_RUNS; r++)); do
        if ((best < 0)) || awk -v a="${rps[r]}" -v b="${rps[best]}" 'BEGIN {exit !(a > b)}'; then best=$r; fi
        if ((errs[r] == 0)); then
            if ((best_clean < 0)) || awk -v a="${rps[r]}" -v b="${rps[best_clean]}" 'BEGIN {exit !(a > b)}'; then best_clean=$r; fi
        fi
    done
    pick=$((best_clean >= 0 ? best_clean : best))
    RPS[$key]=${rps[pick]}
    P99[$key]=${p99[pick]}
    P50[$key]=${p50[pick]}
    CPU[$key]=${cpu[pick]}
    RSS[$key]=${rss[pick]}
    ERRS[$key]=${errs[pick]}
    CELL[$key]=ok
    ((parsed[pick])) || CELL[$key]="wrk gave no result"
    if ((errs[pick] > 0)) && [[ $srv == itk && $mode == alternate ]]; then
        # What the workload shows: mpm-itk closes a connection whose next request is
        # for another uid's vhost, and wrk counts those closes as read errors.
        NOTES+=("$srv, $file $mode: ${errs[pick]} connections closed by mpm-itk on a change of tenant (expected; ${errtxt[pick]})")
    elif ((errs[pick] > 0)); then
        NOTES+=("**$srv, $file $mode: ${errs[pick]} errors in the reported run** (${errtxt[pick]})")
        FAILED=1
    fi
    for ((r = 0; r < BENCH_RUNS; r++)); do
        if ((r != pick && errs[r] > 0)); then
            NOTES+=("$srv, $file $mode: run $((r + 1)) (not reported) had ${errs[r]} errors (${errtxt[r]})")
        fi
    done
    if [[ -n ${SERVER_PID[${srv%%-*}]:-} ]] && ! alive "${SERVER_PID[${srv%%-*}]}"; then
        warn "$srv: the server process died during the benchmark"
        NOTES+=("**$srv: the server process died during $file $mode**")
        FAILED=1
    fi
}

bench_server() {
    local srv=$1 port=$2 w
    for w in "${WORKLOADS[@]}"; do
        # shellcheck disable=SC2086 # w is "file mode"
        bench_cell "$srv" "$port" $w
    done
}

# bench_condo_mode NAME PORT UP WHY: one of condo's listeners, if it answered.
bench_condo_mode() {
    local srv=$1 port=$2 up=$3 why=$4
    want "$srv" || return 0
    if ((up)); then
        bench_server "$srv" "$port"
    else
        FAILED=1
        mark_server_failed "$srv" "$why"
        NOTES+=("**$srv: $why** (see the script's output and the raw log)")
    fi
}

mark_server_failed() {
    local srv=$1 why=$2 w
    for w in "${WORKLOADS[@]}"; do CELL["$srv|$w"]=$why; done
}

# ---- 6. report --------------------------------------------------------------------
fmt_cell() {   # rps and p99 columns for one server and workload
    local key=$1 st=${CELL[$1]:-not run}
    if [[ $st != ok ]]; then
        printf '%s | –' "$st"
        return
    fi
    local r
    r=$(printf '%.0f' "${RPS[$key]}")
    if ((ERRS[$key] > 0)); then r="$r ⚠ ${ERRS[$key]} err"; fi
    printf '%s | %s ms' "$r" "${P99[$key]}"
}

ratio() {   # rps(a) / rps(b)
    local a=$1 b=$2 flag=""
    [[ ${CELL[$a]:-} == ok && ${CELL[$b]:-} == ok ]] || { printf '–'; return; }
    if ((ERRS[$a] > 0 || ERRS[$b] > 0)); then flag=" ⚠"; fi
    awk -v x="${RPS[$a]}" -v y="${RPS[$b]}" -v f="$flag" \
        'BEGIN { if (y <= 0) { printf "–"; exit }
                 r = x / y; printf (r >= 0.1 ? "%.2fx%s" : "%.3fx%s"), r, f }'
}


# ---- 6. report and main helpers -----------------------------------------------------
# The first lines of every report: machine, condo revision, load. Scripts add theirs.
header_common() {
    local model rev
    model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    rev=$(git -C "$REPO_DIR" -c safe.directory="$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo "no commit")
    if [[ -n $(git -C "$REPO_DIR" -c safe.directory="$REPO_DIR" status --porcelain 2>/dev/null) ]]; then
        rev="$rev (work tree has uncommitted changes)"
    fi
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), host: $(hostname)"
    echo "- machine: $(nproc) cores, ${model:-unknown CPU}, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
    echo "- nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
    echo "- apache: $(apache2 -v 2>/dev/null | sed -n 's/^Server version: //p') + mpm-itk $(dpkg-query -W -f '${Version}' libapache2-mpm-itk 2>/dev/null || echo '?')"
    echo "- wrk: $(wrk -v 2>&1 | head -n1 | sed 's/ Copyright.*//' || true)"
    echo "- condo: git $rev${CONDO_BIN:+, binary $CONDO_BIN}"
}

header_load() {
    echo "- load: wrk -t$BENCH_THREADS -c$BENCH_CONNS -d$BENCH_DURATION --latency, best of $BENCH_RUNS run(s), $([[ $BENCH_WARMUP == 0 ]] && echo "no warm-up" || echo "$BENCH_WARMUP warm-up before each cell"), Host: a.test"
}

# The "Problems" list and the "All runs" table, for the end of a report.
report_tail() {
    local n s w
    if ((${#NOTES[@]})); then
        echo
        echo "Problems:"
        echo
        for n in "${NOTES[@]}"; do echo "- $n"; done
    fi
    echo
    echo "<details><summary>All runs</summary>"
    echo
    echo "| server | workload | run | rps | p50 | p99 | CPU (cores) | RSS | non-2xx | socket errors |"
    echo "|---|---|--:|--:|--:|--:|--:|--:|--:|---|"
    for s in "${SERVERS_ALL[@]}"; do
        for w in "${WORKLOADS[@]}"; do printf '%s' "${ALLRUNS["$s|$w"]:-}"; done
    done
    echo
    echo "</details>"
    echo
    echo "Raw wrk output: \`$(basename "$RAW")\` (not committed)."
}

# Validate the knobs; dies on nonsense.
check_knobs() {
    [[ $(id -u) == 0 ]] || die "run as root (it creates users and starts servers that switch uid)"
    [[ $BENCH_RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer"
    [[ $BENCH_CONNS =~ ^[1-9][0-9]*$ && $BENCH_THREADS =~ ^[1-9][0-9]*$ ]] ||
        die "BENCH_CONNS and BENCH_THREADS must be positive integers"
    ((BENCH_CONNS >= BENCH_THREADS)) || die "BENCH_CONNS must be >= BENCH_THREADS"
    dur_secs "$BENCH_DURATION" >/dev/null
    [[ $BENCH_WARMUP == 0 ]] || dur_secs "$BENCH_WARMUP" >/dev/null
    local s
    for s in $BENCH_SERVERS; do
        [[ " ${SERVERS_ALL[*]} " == *" $s "* ]] || die "unknown server '$s' in BENCH_SERVERS (known: ${SERVERS_ALL[*]})"
    done
}

# open_results NAME: the temp dir and results/NAME-<date>-<host>.{md,raw.log}.
open_results() {
    TMP=$(mktemp -d /tmp/condo-bench.XXXXXX)
    chmod 0755 "$TMP"   # the tenants, the dispatcher and nginx's workers must traverse it
    mkdir -p "$RESULTS_DIR"
    local stamp
    stamp=$(date +%Y%m%d-%H%M%S)-$(hostname -s 2>/dev/null || hostname)
    MD=$RESULTS_DIR/$1-$stamp.md
    RAW=$RESULTS_DIR/$1-$stamp.raw.log
    : >"$RAW"
}

# Build (or take) condo, start it, benchmark the wanted condo columns, stop it.
prepare_condo() {
    want_condo || return 0
    if build_condo; then CONDO_OK=1; else
        warn "condo could not be built; its columns will say so"
        FAILED=1
    fi
}

run_condo_columns() {
    want_condo || return 0
    if ((CONDO_OK)) && start_condo; then
        bench_condo_mode condo-pass "$CONDO_PASS_PORT" "$CONDO_PASS_UP" "$CONDO_WHY_PASS"
        bench_condo_mode condo-proxy "$CONDO_PROXY_PORT" "$CONDO_PROXY_UP" "$CONDO_WHY_PROXY"
        stop_server condo
    else
        FAILED=1
        if ((CONDO_OK)); then
            bench_condo_mode condo-pass "$CONDO_PASS_PORT" 0 "${CONDO_WHY_PASS:-condo failed to start}"
            bench_condo_mode condo-proxy "$CONDO_PROXY_PORT" 0 "${CONDO_WHY_PROXY:-condo failed to start}"
        else
            bench_condo_mode condo-pass "$CONDO_PASS_PORT" 0 "condo build failed"
            bench_condo_mode condo-proxy "$CONDO_PROXY_PORT" 0 "condo build failed"
        fi
    fi
}

# run_column NAME PORT START_FN [OTHER...]: start one server, benchmark it, stop it and
# the OTHER processes its START_FN started (registered in SERVER_PID under those names).
run_column() {
    local srv=$1 port=$2 start=$3 other
    want "$srv" || return 0
    if "$start"; then
        bench_server "$srv" "$port"
    else
        FAILED=1
        mark_server_failed "$srv" "$srv failed to start"
    fi
    stop_server "$srv"
    for other in "${@:4}"; do stop_server "$other"; done
}

# ---- Apache mpm-itk, shared by the scripts -----------------------------------------
ITK_LABEL=${ITK_LABEL:-mpm-itk}
ITK_EXTRA=${ITK_EXTRA:-}

start_itk() {
    local pid rc=0 m=/usr/lib/apache2/modules t
    local start=$((BENCH_CONNS + 5)) maxspare=$((BENCH_CONNS + 10)) maxworkers=150
    ((maxworkers >= maxspare + 10)) || maxworkers=$((maxspare + 10))
    port_busy "$ITK_PORT" && { warn "port $ITK_PORT is already in use"; return 1; }
    # Self-contained: does not read /etc/apache2/apache2.conf, so none of Debian's
    # APACHE_* environment variables are needed. $ITK_EXTRA adds what a script needs
    # (modules, handlers) before the vhosts.
    cat >"$TMP/apache/apache2.conf" <<EOF
ServerRoot "$TMP/apache"
ServerName localhost
DefaultRuntimeDir "$TMP/apache/run"
PidFile "$TMP/apache/run/apache2.pid"
Mutex file:$TMP/apache/run default
Listen 127.0.0.1:$ITK_PORT

LoadModule mpm_prefork_module $m/mod_mpm_prefork.so
LoadModule mpm_itk_module $m/mpm_itk.so
LoadModule authz_core_module $m/mod_authz_core.so
LoadModule mime_module $m/mod_mime.so

# Requests that match no vhost run as this account.
User $USER_W
Group $USER_W

# prefork sized for a 2-core box and for the load: every keep-alive connection holds
# a child, and prefork adds at most 32 children a second, so a pool smaller than the
# $BENCH_CONNS connections would make the first seconds of each run measure its
# ramp-up. MaxSpareServers keeps the pool between runs.
StartServers $start
MinSpareServers 5
MaxSpareServers $maxspare
ServerLimit $maxworkers
MaxRequestWorkers $maxworkers
MaxConnectionsPerChild 0

KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 5
Timeout 60
EnableSendfile On
HostnameLookups Off
TypesConfig /etc/mime.types

ErrorLog $TMP/apache/logs/error.log
LogLevel warn
LogFormat "%h %l %u %t \"%r\" %>s %O \"%{Referer}i\" \"%{User-Agent}i\"" combined
CustomLog $TMP/apache/logs/access.log combined

<Directory />
    AllowOverride None
    Require all denied
</Directory>
$ITK_EXTRA
EOF
    for t in a b; do
        cat >>"$TMP/apache/apache2.conf" <<EOF

<VirtualHost 127.0.0.1:$ITK_PORT>
    ServerName $t.test
    DocumentRoot $TMP/$t/www
    AssignUserID condo-bench-$t condo-bench-$t
    <Directory $TMP/$t/www>
        Require all granted
    </Directory>
</VirtualHost>
EOF
    done
    log "starting apache2 ($ITK_LABEL)"
    setsid apache2 -f "$TMP/apache/apache2.conf" -DFOREGROUND >"$TMP/apache/logs/stderr.log" 2>&1 </dev/null &
    pid=$!
    SERVER_PID[itk]=$pid
    wait_ready "$ITK_PORT" a.test "$pid" 10 || rc=$?
    if ((rc != 0)); then
        warn "apache2 ($ITK_LABEL) FAILED to start; its logs:"
        cat "$TMP/apache/logs/stderr.log" "$TMP/apache/logs/error.log" 2>/dev/null | tail -n 50 >&2
        stop_server itk
        return 1
    fi
    check_vhosts itk "$ITK_PORT"
    show_procs itk "$pid"
}
