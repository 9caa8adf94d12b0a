#!/usr/bin/env bash
# A host with many tenants (issue 23): TENANTS (10,000) tenants with two static sites
# each, their accounts plain /etc/passwd and /etc/group entries (as a host's account
# database holds them; removed at exit), and prints:
#   - `condo check` time;
#   - time from `condo serve` to the first request served (of the last tenant);
#   - master + dispatcher RSS at idle;
#   - the same after DISTINCT (1,000) tenants were each requested once and every one of
#     their workers scaled back to zero (idle_timeout 2s);
#   - `condo reload --tenant` latency (through the control socket, synchronous) and a
#     full reload's (SIGHUP until the master logs "reloaded");
#   - p50/p99 and errors of wrk on a warm tenant, quiet and while full reloads run.
#
# Run as root on Debian:   sudo bench/tenants.sh
# Smaller:                 sudo TENANTS=2000 DISTINCT=200 bench/tenants.sh
# Uses target/release/condo (built if missing) unless CONDO_BIN is set.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
TENANTS=${TENANTS:-10000}
DISTINCT=${DISTINCT:-1000}
FIRST_UID=${FIRST_UID:-200000}
PORT=${PORT:-18191}
PREFIX=condo-bt-   # account names: condo-bt-0 ...
CONDO=${CONDO_BIN:-$REPO_DIR/target/release/condo}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf '!!! %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
rss_mb() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

[[ $(id -u) -eq 0 ]] || die "run as root (tenants are real uids)"
command -v wrk >/dev/null && command -v curl >/dev/null || die "needs wrk and curl (apt-get install wrk curl)"
if [[ -z ${CONDO_BIN:-} && ! -x $CONDO ]]; then
    log "building condo (release)"
    (cd "$REPO_DIR" && cargo build --release --quiet)
fi

TMP=$(mktemp -d /tmp/condo-bench-tenants.XXXXXX)
chmod 755 "$TMP"
CONDO_PID=""
cleanup() {
    if [[ -n $CONDO_PID ]] && kill -0 "$CONDO_PID" 2>/dev/null; then
        kill -TERM "$CONDO_PID"
        for _ in $(seq 100); do kill -0 "$CONDO_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$CONDO_PID" 2>/dev/null || true
    fi
    sed -i "/^${PREFIX}[0-9]*:/d" /etc/passwd /etc/group
    userdel "${PREFIX}d" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

for ((id = FIRST_UID; id < FIRST_UID + TENANTS; id += 997)); do
    ! getent passwd "$id" >/dev/null || die "uid $id is taken: set FIRST_UID"
done
# The dispatcher's own unprivileged account (outside uid_range).
useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "${PREFIX}d"
log "creating $TENANTS accounts and $((2 * TENANTS)) sites under $TMP"
mkdir -p "$TMP/sites" "$TMP/h"
{
    for ((i = 0; i < TENANTS; i++)); do
        printf '%s%d:x:%d:%d::%s/h/%d:/usr/sbin/nologin\n' "$PREFIX" "$i" $((FIRST_UID + i)) $((FIRST_UID + i)) "$TMP" "$i"
    done
} >>/etc/passwd
{
    for ((i = 0; i < TENANTS; i++)); do
        printf '%s%d:x:%d:\n' "$PREFIX" "$i" $((FIRST_UID + i))
    done
} >>/etc/group
python3 - "$TMP" "$TENANTS" "$FIRST_UID" "$PREFIX" "$PORT" <<'PY'
import os, sys
tmp, n, first, prefix, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
main = [
    "[server]",
    f'listen = ["127.0.0.1:{port}"]',
    f'user = "{prefix}d"',
    f"uid_range = [{first}, {first + n}]",
    f'log_dir = "{tmp}/log"', f'run_dir = "{tmp}/run"', f'state_dir = "{tmp}/state"',
    f'cgroup_parent = "condobt{os.getpid()}"',
    "[defaults]", 'idle_timeout = "2s"',
]
for i in range(n):
    uid = first + i
    home = f"{tmp}/h/{i}"
    root = f"{home}/www"
    os.makedirs(root)
    with open(f"{root}/index.html", "w") as f:
        f.write(f"tenant {i}\n")
    for p in (home, root, f"{root}/index.html"):
        os.chown(p, uid, uid)
    main.append(f'[tenant.t{i}]\nuser = "{prefix}{i}"')
    with open(f"{tmp}/sites/t{i}.toml", "w") as f:
        f.write(f'[[site]]\nname = "t{i}.test"\ntenant = "t{i}"\nroot = "{root}"\n'
                f'[[site]]\nname = "t{i}-shop.test"\naliases = ["www.t{i}-shop.test"]\ntenant = "t{i}"\nroot = "{root}"\n')
with open(f"{tmp}/condo.toml", "w") as f:
    f.write("\n".join(main) + "\n")
PY
CONF=$TMP/condo.toml

t=$(now)
"$CONDO" check -c "$CONF" >"$TMP/check.out" || { cat "$TMP/check.out"; die "condo check failed"; }
CHECK_S=$(since "$t")

t=$(now)
RUST_LOG=info "$CONDO" serve -c "$CONF" 2>"$TMP/serve.log" &
CONDO_PID=$!
last=$((TENANTS - 1))
until [[ $(curl -s --max-time 2 -H "Host: t$last.test" "http://127.0.0.1:$PORT/" 2>/dev/null) == "tenant $last" ]]; do
    kill -0 "$CONDO_PID" 2>/dev/null || { tail -20 "$TMP/serve.log"; die "condo serve exited"; }
    (($(awk -v a="$t" -v b="$(now)" 'BEGIN { print (b - a > 120) }'))) && die "no answer within 120 s"
    sleep 0.02
done
FIRST_S=$(since "$t")
DISPATCHER=$(pgrep -P "$CONDO_PID" -f 'condo dispatcher' | head -1)
workers() { pgrep -P "$CONDO_PID" -f ' worker --tenant ' | wc -l; }
wait_zero() {
    for _ in $(seq 600); do [[ $(workers) -eq 0 ]] && return 0; sleep 0.1; done
    return 1
}
wait_zero || die "workers did not scale to zero"
sleep 1
RSS_IDLE="$(rss_mb "$CONDO_PID") + $(rss_mb "$DISPATCHER")"

log "requesting $DISTINCT distinct tenants once each"
t=$(now)
for ((i = 0; i < DISTINCT; i++)); do
    curl -s -o /dev/null --max-time 5 -H "Host: t$((i * TENANTS / DISTINCT)).test" "http://127.0.0.1:$PORT/" || true
done
COLD_S=$(since "$t")
wait_zero || die "workers did not scale to zero after the distinct requests"
sleep 1
RSS_AFTER="$(rss_mb "$CONDO_PID") + $(rss_mb "$DISPATCHER")"

reload_tenant_ms=()
for i in 1 2 3 4 5; do
    t=$(now)
    "$CONDO" reload -c "$CONF" --tenant "t$((i * 7))" >/dev/null
    reload_tenant_ms+=("$(awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.0f", (b - a) * 1000 }')")
done

full_reload() {
    local before t
    before=$(grep -c 'reloaded:' "$TMP/serve.log" || true)
    t=$(now)
    kill -HUP "$CONDO_PID"
    until (($(grep -c 'reloaded:' "$TMP/serve.log" || true) > before)); do sleep 0.01; done
    since "$t"
}
FULL_S=$(full_reload)

curl -s -o /dev/null -H "Host: t1.test" "http://127.0.0.1:$PORT/"
wrk_p() {   # wrk summary: "p50 p99 errors requests"
    wrk -t1 -c4 -d"$1" --latency -H "Host: t1.test" "http://127.0.0.1:$PORT/" | awk '
        / 50%/ { p50 = $2 } / 99%/ { p99 = $2 }
        /requests in/ { req = $1 }
        /Socket errors/ { err += $4 + $6 + $8 + $10 }
        /Non-2xx/ { err += $NF }
        END { printf "%s %s %d %s", p50, p99, err, req }'
}
QUIET=$(wrk_p 8s)
( sleep 1; for _ in 1 2 3; do kill -HUP "$CONDO_PID"; sleep 2; done ) &
RELOADER=$!
RELOADING=$(wrk_p 8s)
wait "$RELOADER"   # not a bare `wait`: that would wait for condo serve too

cat <<EOF

condo, $TENANTS tenants / $((2 * TENANTS)) sites ($(nproc) cores, $(uname -r))
| what | measured | target |
|---|---|---|
| condo check | ${CHECK_S} s | <= 2 s |
| start to first request (last tenant) | ${FIRST_S} s | <= 3 s |
| master + dispatcher RSS, idle | ${RSS_IDLE} MB | <= 100 MB |
| same after $DISTINCT tenants requested once and scaled to zero | ${RSS_AFTER} MB | |
| $DISTINCT cold starts, one after another | ${COLD_S} s | |
| reload --tenant (5 runs, ms) | ${reload_tenant_ms[*]} | <= 100 ms |
| full reload (SIGHUP to "reloaded") | ${FULL_S} s | |
| warm tenant, quiet: p50 p99 errors requests | ${QUIET} | |
| warm tenant, 3 full reloads: p50 p99 errors requests | ${RELOADING} | 0 errors, p99 <= 2x quiet |
EOF
