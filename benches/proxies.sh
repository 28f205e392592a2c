#!/usr/bin/env bash
# proxies.sh: nginx, HAProxy and the gateway side by side on loopback, plain or with TLS on
# either side, with each proxy's CPU time per request.
#
#   cargo build --release -p tower-lb-gateway
#   GW=target/release/tower-lb-gateway benches/proxies.sh                    # plain HTTP
#   LISTEN_TLS=1 GW=target/release/tower-lb-gateway benches/proxies.sh       # TLS termination
#   LISTEN_TLS=1 UPSTREAM_TLS=1 GW=… benches/proxies.sh                      # TLS on both sides
#
# Backends: the bench backend of ../shared/bench (BACKEND_BIN; one process, ports
# 19001-19003) for plain upstreams; for UPSTREAM_TLS=1, an nginx (1 worker) answering
# `port N` over TLS on 19101-19103 (certificate signed by the run's CA, verified by every
# proxy). Proxies, one worker or thread each: nginx 18481, HAProxy 18482, the gateway
# (--workers 1, its defaults otherwise) 18483; all three get the same certificate and key,
# made by openssl for the run (EC P-256). Each proxy is loaded by
# `wrk -t1 -c$CONNS -d$DURATION --latency` (after a 1 s warm-up, so handshakes are not
# counted), ROUNDS times in alternation. For each run: req/s, p50, p99, and the proxy's user
# and kernel CPU time per request from /proc/PID/stat over the measured run.
#
# SYSCALLS=1 adds, after the rounds, each proxy's system calls per request by name: the
# worker traced with `strace -f -c` over one more `wrk -d3s` run (strace slows the proxy;
# the counts per request stay exact).
#
# HYPER=path (plain HTTP only) adds a fourth row on 18484: a proxy built on hyper alone (the
# one in BENCHMARKS.md, run as `PATH LISTEN BACKEND...`), the floor of what hyper costs.
#
# Every process started here is killed on exit; nothing else is touched. Loopback only.
set -euo pipefail

GW=${GW:?GW=path to the tower-lb-gateway binary}
BACKEND_BIN=${BACKEND_BIN:-${TMPDIR:-/tmp}/tower-lb-bench-target/release/backend}
LISTEN_TLS=${LISTEN_TLS:-0}
UPSTREAM_TLS=${UPSTREAM_TLS:-0}
DURATION=${DURATION:-8s}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-2}
GW_ARGS=${GW_ARGS:-}
HYPER=${HYPER:-}
SYSCALLS=${SYSCALLS:-0}
HOST=127.0.0.1

for tool in wrk nginx haproxy curl openssl setsid; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[[ $SYSCALLS == 0 ]] || command -v strace >/dev/null || { echo "missing strace" >&2; exit 1; }
[[ -x $BACKEND_BIN ]] || { echo "no backend at $BACKEND_BIN (run ../shared/bench/setup.sh)" >&2; exit 1; }

TMP=$(mktemp -d /tmp/lb-proxies.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
log() { printf '[proxies] %s\n' "$*" >&2; }

start_bg() { # NAME CMD...
    local name=$1; shift
    setsid "$@" >"$TMP/$name.log" 2>&1 </dev/null &
    PIDS+=("$!")
    eval "PID_$name=$!"
}

# ---- certificates: one CA; one certificate for 127.0.0.1 and localhost, used by all
(
    cd "$TMP"
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
        -out ca.pem -days 30 -subj /CN=bench-ca -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' >leaf.ext
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem \
        -out leaf.csr -subj /CN=localhost 2>/dev/null
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 2 -days 30 \
        -extfile leaf.ext -out cert.pem 2>/dev/null
    cat cert.pem key.pem >combined.pem
)

# ---- backends
if [[ $UPSTREAM_TLS == 1 ]]; then
    PORTS=(19101 19102 19103)
    cat >"$TMP/backend-nginx.conf" <<EOF
worker_processes 1;
pid $TMP/backend-nginx.pid;
error_log $TMP/backend-nginx.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/b-body; proxy_temp_path $TMP/b-proxy; fastcgi_temp_path $TMP/b-fcgi;
    uwsgi_temp_path $TMP/b-uwsgi; scgi_temp_path $TMP/b-scgi;
    keepalive_requests 1000000;
$(for p in "${PORTS[@]}"; do printf '    server { listen %s:%s ssl; ssl_certificate %s/cert.pem; ssl_certificate_key %s/key.pem; location / { return 200 "port %s\\n"; } }\n' $HOST "$p" "$TMP" "$TMP" "$p"; done)
}
EOF
    start_bg backend nginx -p "$TMP" -e "$TMP/backend-nginx.error.log" -c "$TMP/backend-nginx.conf" -g 'daemon off;'
    SCHEME=https
else
    PORTS=(19001 19002 19003)
    start_bg backend "$BACKEND_BIN" "${PORTS[@]/#/$HOST:}"
    SCHEME=http
fi

wait_ok() { # URL
    local deadline=$((SECONDS + 20))
    while ((SECONDS < deadline)); do
        [[ $(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true) == 200 ]] && return 0
        sleep 0.1
    done
    echo "no 200 from $1 within 20 s" >&2
    tail -n 20 "$TMP"/*.log >&2 || true
    exit 1
}
for p in "${PORTS[@]}"; do wait_ok "$SCHEME://$HOST:$p/"; done

# ---- proxies
if [[ $LISTEN_TLS == 1 ]]; then
    FRONT=https
    NGINX_LISTEN="listen $HOST:18481 ssl; ssl_certificate $TMP/cert.pem; ssl_certificate_key $TMP/key.pem;"
    HAPROXY_BIND="bind $HOST:18482 ssl crt $TMP/combined.pem alpn http/1.1"
    GW_TLS="--tls-cert $TMP/cert.pem --tls-key $TMP/key.pem"
else
    FRONT=http
    NGINX_LISTEN="listen $HOST:18481;"
    HAPROXY_BIND="bind $HOST:18482"
    GW_TLS=""
fi
if [[ $UPSTREAM_TLS == 1 ]]; then
    NGINX_UP="proxy_ssl_verify on; proxy_ssl_trusted_certificate $TMP/ca.pem; proxy_ssl_name localhost; proxy_ssl_session_reuse on;"
    HAPROXY_SSL="ssl verify required ca-file $TMP/ca.pem"
    GW_UP="--backend-ca $TMP/ca.pem"
else
    NGINX_UP=""
    HAPROXY_SSL=""
    GW_UP=""
fi

cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/n-body; proxy_temp_path $TMP/n-proxy; fastcgi_temp_path $TMP/n-fcgi;
    uwsgi_temp_path $TMP/n-uwsgi; scgi_temp_path $TMP/n-scgi;
    keepalive_requests 1000000;
    upstream backends {
$(for p in "${PORTS[@]}"; do echo "        server $HOST:$p;"; done)
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        $NGINX_LISTEN
        location / {
            proxy_pass $SCHEME://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            $NGINX_UP
        }
    }
}
EOF
start_bg nginx nginx -p "$TMP" -e "$TMP/nginx.error.log" -c "$TMP/nginx.conf" -g 'daemon off;'

cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend fe
    $HAPROXY_BIND
    default_backend be
backend be
    balance roundrobin
$(i=0; for p in "${PORTS[@]}"; do i=$((i+1)); echo "    server b$i $HOST:$p $HAPROXY_SSL"; done)
EOF
start_bg haproxy haproxy -db -f "$TMP/haproxy.cfg"

# shellcheck disable=SC2086  # flags are word-split on purpose
start_bg gateway "$GW" --workers 1 --listen $HOST:18483 $GW_TLS $GW_UP \
    $(for p in "${PORTS[@]}"; do printf -- '--backend %s://%s:%s ' "$SCHEME" $HOST "$p"; done) $GW_ARGS

declare -A PORT=([nginx]=18481 [haproxy]=18482 [gateway]=18483 [hyper]=18484)
NAMES=(nginx haproxy gateway)
if [[ -n $HYPER ]]; then
    [[ $LISTEN_TLS == 0 && $UPSTREAM_TLS == 0 ]] || { echo "HYPER is for plain HTTP only" >&2; exit 1; }
    start_bg hyper "$HYPER" $HOST:18484 $(for p in "${PORTS[@]}"; do printf -- '%s:%s ' $HOST "$p"; done)
    NAMES+=(hyper)
fi

for name in "${NAMES[@]}"; do wait_ok "$FRONT://$HOST:${PORT[$name]}/"; done
log "listeners: $FRONT, upstreams: $SCHEME; loadavg $(cut -d' ' -f1-3 /proc/loadavg)"

# ---- runs
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
CLK=$(getconf CLK_TCK)
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 }
        else printf "n/a" }'
}
# The process doing the work: nginx's worker (the child of the master), HAProxy, the gateway.
worker_of() {
    case $1 in
        nginx) pgrep -P "$PID_nginx" | head -n1 ;;
        haproxy) echo "$PID_haproxy" ;;
        gateway) echo "$PID_gateway" ;;
        hyper) echo "$PID_hyper" ;;
    esac
}
printf '%-8s %-6s %10s %8s %8s %9s %9s %s\n' proxy round req/s p50_ms p99_ms user_us kernel_us errors
for round in $(seq 1 "$ROUNDS"); do
    for name in "${NAMES[@]}"; do
        url="$FRONT://$HOST:${PORT[$name]}/"
        pid=$(worker_of "$name")
        wrk -t1 -c"$CONNS" -d1s "$url" >/dev/null 2>&1 || true
        read -r u0 s0 < <(ticks "$pid")
        out=$(timeout 60 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$url" 2>&1)
        read -r u1 s1 < <(ticks "$pid")
        rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
        total=$(awk '/requests in/ {print $1}' <<<"$out")
        p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
        p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
        errs=$(awk '/Non-2xx|Socket errors/' <<<"$out" | tr -s ' ' | paste -sd';' -)
        user=$(awk -v a="$u0" -v b="$u1" -v n="$total" -v c="$CLK" 'BEGIN { printf "%.2f", (b - a) / c / n * 1e6 }')
        kern=$(awk -v a="$s0" -v b="$s1" -v n="$total" -v c="$CLK" 'BEGIN { printf "%.2f", (b - a) / c / n * 1e6 }')
        printf '%-8s %-6s %10s %8s %8s %9s %9s %s\n' "$name" "$round" "$rps" "$p50" "$p99" "$user" "$kern" "${errs:-none}"
    done
done

# ---- system calls per request (SYSCALLS=1)
if [[ $SYSCALLS == 1 ]]; then
    for name in "${NAMES[@]}"; do
        url="$FRONT://$HOST:${PORT[$name]}/"
        strace -f -c -o "$TMP/$name.strace" -p "$(worker_of "$name")" 2>/dev/null &
        tracer=$!
        sleep 1 # attached
        out=$(timeout 60 wrk -t1 -c"$CONNS" -d3s "$url" 2>&1)
        kill -INT "$tracer"
        wait "$tracer" || true
        total=$(awk '/requests in/ {print $1}' <<<"$out")
        # strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall.
        awk -v n="$total" '
            $1 ~ /^[0-9.]+$/ && $NF != "total" { printf "%s %.3f\n", $NF, $4 / n }
            $NF == "total" { printf "all %.3f\n", $4 / n }' "$TMP/$name.strace" |
            sort -k2 -rn | awk -v who="$name" '{ printf "%s%s %s", (NR == 1 ? who ": " : ", "), $1, $2 } END { print "" }'
    done
fi
