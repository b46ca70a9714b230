#!/usr/bin/env bash
#
# certgate vs nginx on this machine, side by side, in one run.
#
#   benches/harness.sh              # the comparison (a few minutes after the build)
#   benches/harness.sh profile      # where the CPU goes: strace and callgrind (slow)
#   SCENARIOS="h1_keepalive h2" DURATION=3 IDLE_CONNS=2000 benches/harness.sh
#
# It builds certgate in release, makes two PKIs (ECDSA P-256 with
# `certgate dev-pki`, RSA-2048 with openssl), and starts:
#   - one upstream for everybody: nginx (1 worker) answering `return 200`;
#   - certgate twice: TOKIO_WORKER_THREADS=1 (tokio's current-thread
#     scheduler), and the default (a work-stealing worker per core);
#   - nginx from Debian's package, 1 worker, configured like certgate:
#     ssl_verify_client on, same CA and CRL, X25519 only, role map + path
#     and method check, the same identity headers, keep-alive upstream pool,
#     access logs off on both;
#   - for the keep-alive scenarios also "nginx lean": the same TLS and
#     client-certificate checks, but no role map and no method check, and
#     only four identity headers (subject, issuer, serial, fingerprint): the
#     least an nginx in front of one API is configured with. certgate still
#     does all of its work against it.
# and measures, one target after another:
#   hs_ecdsa, hs_rsa   full mTLS handshakes, one request per new connection
#                      (benches/loadclient.rs: offers only X25519, never resumes);
#   hs_oha_default     the same through oha --disable-keepalive with oha's
#                      defaults (X25519MLKEM768 offered first, resumption on);
#   h1_keepalive, h2   CONNS keep-alive HTTP/1.1 connections; HTTP/2 with
#                      CONNS/4 connections x 4 streams (oha; ROUNDS interleaved
#                      runs per target, medians reported);
#   grpc_1conn, grpc   unary gRPC calls (POST of a length-prefixed message,
#                      content-type application/grpc, te: trailers) over one
#                      HTTP/2 connection x 8 streams, and over CONNS/4 x 4;
#                      certgate with upstream.protocol = "http2", nginx with
#                      grpc_pass, both to an h2c upstream (nginx answering a
#                      gRPC-framed reply with a grpc-status trailer);
#   latency            p50/p99 at RATE req/s over 8 connections for 2 x DURATION:
#                      upstream direct vs through each gateway;
#   idle_memory        VmRSS per idle mTLS connection with IDLE_CONNS open
#                      (fresh gateway processes; each connection made one request):
#                      all presenting one client certificate (a pooling client),
#                      then each presenting its own (loadclient --distinct-certs).
# Server CPU per operation = utime+stime delta of the gateway's processes
# (/proc/PID/stat, every thread; nginx master + worker) / successful requests.
# The load client and the upstream share the machine, so throughput is bounded
# by them too; run it on an otherwise idle machine.
#
# Output: benches/out/results.md (the tables), benches/out/results.jsonl (one
# raw record per measurement), benches/out/run/ (configs, PKIs, logs, raw JSON),
# benches/out/profile/ (profile mode). oha is installed into benches/out/tools
# when absent (cargo install, several minutes once); nginx with apt-get.

set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/benches/out
RUN=$OUT/run
TOOLS=$OUT/tools
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
RATE=${RATE:-1000}
IDLE_CONNS=${IDLE_CONNS:-10000}
ROUNDS=${ROUNDS:-3} # keep-alive HTTP/1.1 and HTTP/2 runs per target, interleaved; medians reported
SCENARIOS=${SCENARIOS:-hs_rsa hs_ecdsa hs_oha_default h1_keepalive h2 grpc latency idle_memory}
CLK_TCK=$(getconf CLK_TCK)
RESULTS=$OUT/results.jsonl

PIDS=()
declare -A PID PORT # by target name: cg1, cgN, nginx, nginx_lean, upstream
RUN_NO=0
WRAP=(env) # launcher prefix for gateways (profile mode: valgrind)
log() { printf '[harness] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# ------------------------------------------------------------ tools ----

start_oha_install() {
    OHA=$(command -v oha || true)
    [[ -n $OHA ]] && return
    OHA=$TOOLS/bin/oha
    [[ -x $OHA ]] && return
    log "installing oha into $TOOLS (compiles for several minutes, in the background)"
    cargo install oha --locked --root "$TOOLS" >"$OUT/oha-install.log" 2>&1 &
    OHA_INSTALL=$!
}

wait_oha_install() {
    if [[ -n ${OHA_INSTALL:-} ]]; then
        wait "$OHA_INSTALL" || die "cargo install oha failed, see $OUT/oha-install.log"
    fi
    [[ -x $OHA ]] || die "oha not found at $OHA"
}

ensure_packages() { # commands (each from the Debian package of the same name)
    local missing=() cmd
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]} with apt-get"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

build() {
    log "building certgate and the load client (release)"
    (cd "$ROOT" && cargo build --release --bin certgate --quiet)
    CERTGATE=${CARGO_TARGET_DIR:-$ROOT/target}/release/certgate
    LOADCLIENT=$(cd "$ROOT" && cargo bench --no-run --bench loadclient --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "loadclient" and m.get("executable"):
        print(m["executable"])')
    [[ -x $LOADCLIENT ]] || die "cannot find the loadclient bench executable"
}

# -------------------------------------------------------------- PKI ----

rsa_pki() {
    local d=$1
    mkdir -p "$d"
    (
        cd "$d"
        cat >ext.cnf <<'EOF'
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
authorityKeyIdentifier = keyid
[client]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = URI:spiffe://certgate.dev/user
authorityKeyIdentifier = keyid
[ca_db]
database = index.txt
crlnumber = crlnumber
default_md = sha256
default_crl_days = 30
EOF
        gen() { openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1.key"; }
        gen ca
        openssl req -new -x509 -key ca.key -out ca.pem -days 30 -subj "/O=certgate dev/CN=certgate dev RSA CA" \
            -extensions ca -config <(printf '[req]\ndistinguished_name=dn\n[dn]\n'; cat ext.cnf)
        local name subj
        for name in server user; do
            gen "$name"
            subj="/CN=localhost"
            [[ $name == user ]] && subj="/O=certgate dev/OU=apps/CN=user"
            openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr"
            openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
                -days 30 -extfile ext.cnf -extensions "$([[ $name == user ]] && echo client || echo server)" \
                -out "$name.pem" 2>/dev/null
        done
        : >index.txt
        echo 01 >crlnumber
        openssl ca -gencrl -config <(printf '[ca]\ndefault_ca=ca_db\n'; cat ext.cnf) -name ca_db \
            -keyfile ca.key -cert ca.pem -out crl.pem 2>/dev/null
    )
}

make_pkis() {
    log "making PKIs: ECDSA P-256 (certgate dev-pki), RSA-2048 (openssl)"
    "$CERTGATE" dev-pki --out "$RUN/pki/ecdsa" >/dev/null
    rsa_pki "$RUN/pki/rsa"
}

# --------------------------------------------------------- processes ----

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    local port=$1
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return
        sleep 0.1
    done
    die "nothing listens on port $port"
}

nginx_common() {
    local dir=$1
    cat <<EOF
worker_processes 1;
worker_rlimit_nofile $(ulimit -n);
daemon off;
master_process ${NGINX_MASTER:-on};
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $(($(ulimit -n) - 100)); }
EOF
}

nginx_temp_paths() {
    local dir=$1
    cat <<EOF
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
EOF
}

start_nginx() { # name: runs $RUN/<name>/nginx.conf; sets PID[name]
    local name=$1 dir=$RUN/$1
    mkdir -p "$dir/tmp"
    nginx -t -q -c "$dir/nginx.conf" -p "$dir" 2>"$dir/check.log" || die "nginx config $name: $(cat "$dir/check.log")"
    "${WRAP[@]}" nginx -c "$dir/nginx.conf" -p "$dir" 2>>"$dir/error.log" &
    PIDS+=($!)
    PID[$name]=$!
}

# The gRPC reply of the h2c upstream: one length-prefixed message (no
# compression, 5 bytes "hello"). nginx takes the NUL bytes of `return` text
# as they are.
GRPC_REPLY='\x00\x00\x00\x00\x05hello'

start_upstream() {
    UP_PORT=$(free_port)
    GRPC_UP_PORT=$(free_port)
    mkdir -p "$RUN/upstream"
    {
        nginx_common "$RUN/upstream"
        cat <<EOF
http {
    access_log off;
$(nginx_temp_paths "$RUN/upstream")
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        default_type text/plain;
        # What the gateway told us, so the harness can check both forward alike.
        location / { return 200 "subject=\$http_x_client_subject roles=\$http_x_client_roles\n"; }
    }
    # gRPC over h2c: any call gets the same message and grpc-status 0 in
    # the trailers, with the identity it was sent (for check_grpc).
    server {
        listen 127.0.0.1:$GRPC_UP_PORT http2 backlog=4096;
        location / {
            default_type application/grpc;
            add_trailer grpc-status 0 always;
            add_trailer x-seen-subject \$http_x_client_subject always;
            add_trailer x-seen-roles \$http_x_client_roles always;
            return 200 "@GRPC_REPLY@";
        }
    }
}
EOF
    } >"$RUN/upstream/nginx.conf.in"
    python3 -c 'import sys; t = open(sys.argv[1], "rb").read(); open(sys.argv[2], "wb").write(t.replace(b"@GRPC_REPLY@", sys.argv[3].encode().decode("unicode_escape").encode("latin-1")))' \
        "$RUN/upstream/nginx.conf.in" "$RUN/upstream/nginx.conf" "$GRPC_REPLY"
    start_nginx upstream
    wait_port "$UP_PORT"
    wait_port "$GRPC_UP_PORT"
}

# The http block's opening both nginx gateways share: no access log,
# long keep-alive to the clients and a keep-alive pool to the upstream.
nginx_gateway_http() { # dir
    cat <<EOF
    access_log off;
$(nginx_temp_paths "$1")
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 100000000;
    }
EOF
}

# The listener and client-certificate checks both nginx gateways share.
nginx_gateway_tls() { # pki port
    local pki=$1 port=$2
    cat <<EOF
        listen 127.0.0.1:$port ssl http2 backlog=4096;
        ssl_certificate $pki/server.pem;
        ssl_certificate_key $pki/server.key;
        ssl_client_certificate $pki/ca.pem;
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_crl $pki/crl.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ecdh_curve X25519;
EOF
}

# Writes $RUN/<name>/nginx.conf from the http block on stdin, starts it and
# waits for its port.
run_nginx_gateway() { # name port
    local name=$1 port=$2 dir=$RUN/$1
    mkdir -p "$dir"
    {
        nginx_common "$dir"
        cat
    } >"$dir/nginx.conf"
    start_nginx "$name"
    wait_port "$port"
}

# The four certificate headers both nginx setups send upstream.
nginx_identity_headers() { # directive: proxy_set_header or grpc_set_header
    cat <<EOF
            $1 X-Client-Subject \$ssl_client_s_dn;
            $1 X-Client-Issuer \$ssl_client_i_dn;
            $1 X-Client-Serial \$ssl_client_serial;
            $1 X-Client-Fingerprint \$ssl_client_fingerprint;
EOF
}

start_nginx_gateway() { # pki
    local pki=$1 dir=$RUN/nginx
    NG_PORT=$(free_port)
    run_nginx_gateway nginx "$NG_PORT" <<EOF
http {
$(nginx_gateway_http "$dir")
    # certgate: [[roles.map]] cn = "user", ou = "apps" => ROLE_USER
    map \$ssl_client_s_dn \$client_roles {
        default "";
        "~^CN=user,OU=apps(,|$)" "ROLE_USER";
    }
    upstream grpc_backend {
        server 127.0.0.1:$GRPC_UP_PORT;
        keepalive 64;
        keepalive_requests 100000000;
    }
    server {
$(nginx_gateway_tls "$pki" "$NG_PORT")
        # certgate: [[authorization.rule]] path = "/api", methods = GET/HEAD, roles = ["ROLE_USER"]
        location /api/ {
            limit_except GET { deny all; }
            if (\$client_roles = "") { return 403; }
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
$(nginx_identity_headers proxy_set_header)
            proxy_set_header X-Client-Not-After \$ssl_client_v_end;
            proxy_set_header X-Client-Roles \$client_roles;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Request-Id \$request_id;
        }
        # certgate: [[authorization.rule]] path = "/certgate.bench.Echo", methods = POST, roles = ["ROLE_USER"]
        location /certgate.bench.Echo/ {
            limit_except POST { deny all; }
            if (\$client_roles = "") { return 403; }
            grpc_pass grpc://grpc_backend;
$(nginx_identity_headers grpc_set_header)
            grpc_set_header X-Client-Not-After \$ssl_client_v_end;
            grpc_set_header X-Client-Roles \$client_roles;
            grpc_set_header X-Forwarded-For \$remote_addr;
            grpc_set_header X-Forwarded-Proto https;
            grpc_set_header X-Request-Id \$request_id;
        }
        location / { return 403; }
    }
}
EOF
}

# nginx with the least an mTLS proxy in front of one API is configured
# with: every certificate check, but no roles, no method check and four
# identity headers.
start_nginx_lean() { # pki
    local pki=$1 dir=$RUN/nginx_lean
    NG_LEAN_PORT=$(free_port)
    run_nginx_gateway nginx_lean "$NG_LEAN_PORT" <<EOF
http {
$(nginx_gateway_http "$dir")
    server {
$(nginx_gateway_tls "$pki" "$NG_LEAN_PORT")
        location /api/ {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
$(nginx_identity_headers proxy_set_header)
        }
        location / { return 403; }
    }
}
EOF
}

start_certgate() { # name, pki dir, worker threads ("" = runtime default), [upstream url, upstream protocol]
    local name=$1 pki=$2 threads=$3 url=${4:-http://127.0.0.1:$UP_PORT} protocol=${5:-} dir=$RUN/$1 port admin
    mkdir -p "$dir"
    port=$(free_port)
    admin=$(free_port)
    cat >"$dir/certgate.toml" <<EOF
[listener]
address = "127.0.0.1:$port"
max_connections = $(($(ulimit -n) - 100))
idle_timeout = "300s"

[server_tls]
cert = "$pki/server.pem"
key = "$pki/server.key"

[client_auth]
trusted_cas = ["$pki/ca.pem"]
crls = ["$pki/crl.pem"]

[upstream]
url = "$url"
${protocol:+protocol = \"$protocol\"}

[[roles.map]]
cn = "user"
ou = "apps"
roles = ["ROLE_USER"]

[authorization]
default = "deny"

[[authorization.rule]]
path = "/api"
methods = ["GET", "HEAD"]
roles = ["ROLE_USER"]

[[authorization.rule]]
path = "/certgate.bench.Echo"
methods = ["POST"]
roles = ["ROLE_USER"]

[admin]
address = "127.0.0.1:$admin"

[log]
access_log = false
EOF
    if [[ -n $threads ]]; then
        TOKIO_WORKER_THREADS=$threads "${WRAP[@]}" "$CERTGATE" run -c "$dir/certgate.toml" 2>"$dir/certgate.log" &
    else
        env -u TOKIO_WORKER_THREADS "${WRAP[@]}" "$CERTGATE" run -c "$dir/certgate.toml" 2>"$dir/certgate.log" &
    fi
    PIDS+=($!)
    PID[$name]=$!
    PORT[$name]=$port
    wait_port "$port"
}

stop() { # pid
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# The processes whose CPU and memory count for a target.
target_pids() {
    case $1 in
    nginx | nginx_lean | upstream) echo "${PID[$1]} $(pgrep -P "${PID[$1]}" | tr '\n' ' ')" ;; # master + worker
    direct) target_pids upstream ;;
    *) echo "${PID[$1]}" ;;
    esac
}

target_port() {
    case $1 in
    nginx) echo "$NG_PORT" ;;
    nginx_lean) echo "$NG_LEAN_PORT" ;;
    direct) echo "$UP_PORT" ;;
    *) echo "${PORT[$1]}" ;;
    esac
}

cpu_ticks() { # pids...: "utime stime" summed over processes (every thread), in clock ticks
    local pid user=0 sys=0 stat
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat")
        stat=${stat##*) } # fields after the command name, from field 3 (state)
        read -r -a f <<<"$stat"
        user=$((user + f[11]))
        sys=$((sys + f[12]))
    done
    echo "$user $sys"
}

rss_kib() { # pids...: summed VmRSS
    local pid total=0 kb
    for pid in "$@"; do
        kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
        total=$((total + kb))
    done
    echo "$total"
}

# ---------------------------------------------------------- measuring ----

# measure SCENARIO TARGET TOOL COMMAND...: runs the load command (oha JSON or
# loadclient JSON on stdout), and appends one normalized record to RESULTS.
measure() {
    local scenario=$1 target=$2 tool=$3
    shift 3
    local pids before after raw=$RUN/raw/$scenario.$target.$((++RUN_NO)).json
    read -r -a pids <<<"$(target_pids "$target")"
    before=$(cpu_ticks "${pids[@]}")
    "$@" >"$raw" 2>"$raw.err" || die "$scenario/$target: load command failed: $(tail -3 "$raw.err")"
    after=$(cpu_ticks "${pids[@]}")
    python3 - "$scenario" "$target" "$tool" "$raw" "$before" "$after" "$CLK_TCK" >>"$RESULTS" <<'EOF'
import json, sys
scenario, target, tool, raw, before, after, hz = sys.argv[1:]
(u0, s0), (u1, s1) = (map(int, t.split()) for t in (before, after))
d = json.load(open(raw))
if tool == "oha":
    s = d["summary"]
    ok = int(d.get("statusCodeDistribution", {}).get("200", 0))
    failed = sum(int(v) for k, v in d.get("statusCodeDistribution", {}).items() if k != "200")
    # Requests still in flight at the deadline are cut off by oha, not failed by the server.
    errors = {k: v for k, v in d.get("errorDistribution", {}).items() if "aborted due to deadline" not in k}
    failed += sum(int(v) for v in errors.values())
    p = d.get("latencyPercentiles", {})
    rec = dict(ok=ok, failed=failed, seconds=s["total"], p50_ms=(p.get("p50") or 0) * 1000,
               p99_ms=(p.get("p99") or 0) * 1000, first_error=next(iter(errors), None))
else:
    rec = {k: d[k] for k in ("ok", "failed", "seconds", "p50_ms", "p99_ms", "first_error")}
rec["rps"] = rec["ok"] / rec["seconds"] if rec["seconds"] else 0
rec["cpu_user_s"], rec["cpu_sys_s"] = (u1 - u0) / int(hz), (s1 - s0) / int(hz)
rec["cpu_s"] = rec["cpu_user_s"] + rec["cpu_sys_s"]
rec["cpu_us_per_op"] = rec["cpu_s"] * 1e6 / rec["ok"] if rec["ok"] else None
rec.update(scenario=scenario, target=target)
print(json.dumps(rec))
EOF
    tail -1 "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("[harness]   %-14s %-6s %9.0f req/s  cpu %7s us/op  p50 %.2f ms  p99 %.2f ms  failed %d%s" % (r["scenario"], r["target"], r["rps"], "%.1f" % r["cpu_us_per_op"] if r["cpu_us_per_op"] else "-", r["p50_ms"], r["p99_ms"], r["failed"], ("  (" + str(r["first_error"]) + ")") if r["first_error"] else ""))' >&2
}

oha_tls() { # pki target extra-args...: oha against a gateway, JSON on stdout
    local pki=$1 target=$2
    shift 2
    env -u TOKIO_WORKER_THREADS "$OHA" --no-tui --output-format json -z "${DURATION}s" \
        --cacert "$pki/ca.pem" --cert "$pki/user.pem" --key "$pki/user.key" \
        "$@" "https://localhost:$(target_port "$target")${OHA_PATH:-/api/bench}"
}

loadclient() { # mode pki target extra-args...
    local mode=$1 pki=$2 target=$3
    shift 3
    "$LOADCLIENT" "$mode" --addr "127.0.0.1:$(target_port "$target")" \
        --ca "$pki/ca.pem" --cert "$pki/user.pem" --key "$pki/user.key" "$@"
}

check_forwarding() { # pki: both gateways must answer 200 and forward the same identity
    local pki=$1 target body first=""
    for target in cg1 nginx; do
        body=$(curl -sS --fail --cacert "$pki/ca.pem" --cert "$pki/user.pem" --key "$pki/user.key" \
            "https://localhost:$(target_port "$target")/api/bench") || die "$target refused the benchmark client"
        log "  $target forwards: $body"
        [[ $body == *"roles=ROLE_USER"* ]] || die "$target did not forward the role header"
        [[ -z $first || $body == "$first" ]] || die "the gateways forward different identities"
        first=$body
    done
    # nginx lean forwards the same subject and no roles.
    body=$(curl -sS --fail --cacert "$pki/ca.pem" --cert "$pki/user.pem" --key "$pki/user.key" \
        "https://localhost:$(target_port nginx_lean)/api/bench") || die "nginx_lean refused the benchmark client"
    log "  nginx_lean forwards: $body"
    [[ $body == "${first% roles=*} roles=" ]] || die "nginx_lean does not forward the same subject"
}

# A real gRPC client (grpcio, from the test venv) through both gateways:
# the call must end OK with the upstream's message, and the upstream must
# have seen the same identity from both (it echoes it in its trailers).
# oha counts every HTTP 200 as a success, and a gRPC error is an HTTP 200
# too, so this is what shows the measured calls are real ones.
check_grpc() { # pki
    local pki=$1 target seen first=""
    for target in cg1 nginx; do
        seen=$("$ROOT/target/test-venv/bin/python" - "$pki" "$(target_port "$target")" <<'EOF'
import sys
import grpc
pki, port = sys.argv[1:]
read = lambda name: open(f"{pki}/{name}", "rb").read()
credentials = grpc.ssl_channel_credentials(read("ca.pem"), read("user.key"), read("user.pem"))
options = [("grpc.ssl_target_name_override", "localhost")]
with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
    reply, call = channel.unary_unary("/certgate.bench.Echo/Unary").with_call(b"hello", timeout=5)
    trailers = dict(call.trailing_metadata())
    print("reply=%s subject=%s roles=%s" % (reply.decode(), trailers.get("x-seen-subject"), trailers.get("x-seen-roles")))
EOF
        ) || die "$target: the gRPC check call failed"
        log "  $target gRPC: $seen"
        [[ $seen == "reply=hello "*"roles=ROLE_USER" ]] || die "$target: unexpected gRPC reply or identity"
        [[ -z $first || $seen == "$first" ]] || die "the gateways forward different identities over gRPC"
        first=$seen
    done
}

grpc_scenarios() { # pki
    local pki=$1 t upstream="http://127.0.0.1:$GRPC_UP_PORT"
    local calls=(--http2 -m POST -H "content-type: application/grpc" -H "te: trailers" -D "$RUN/grpc-request.bin")
    printf "$GRPC_REPLY" >"$RUN/grpc-request.bin"
    log "gRPC: certgate with upstream.protocol = \"http2\", nginx with grpc_pass"
    start_certgate cg1 "$pki" 1 "$upstream" http2
    start_certgate cgN "$pki" "" "$upstream" http2
    start_nginx_gateway "$pki"
    check_grpc "$pki"
    for _ in $(seq "$ROUNDS"); do
        for t in cg1 nginx cgN; do
            OHA_PATH=/certgate.bench.Echo/Unary measure grpc_1conn "$t" oha oha_tls "$pki" "$t" "${calls[@]}" -c 1 -p 8
        done
        for t in cg1 nginx cgN; do
            OHA_PATH=/certgate.bench.Echo/Unary measure grpc "$t" oha oha_tls "$pki" "$t" "${calls[@]}" -c $((CONNS / 4)) -p 4
        done
    done
    gateways_down
}

gateways_up() { # pki
    start_certgate cg1 "$1" 1
    start_certgate cgN "$1" ""
    start_nginx_gateway "$1"
    start_nginx_lean "$1"
    check_forwarding "$1"
}

gateways_down() {
    stop "${PID[cg1]}"
    stop "${PID[cgN]}"
    stop "${PID[nginx]}"
    stop "${PID[nginx_lean]}"
}

handshake_scenario() { # name pki
    local name=$1 pki=$2 t
    for t in cg1 nginx cgN; do
        loadclient handshakes "$pki" "$t" --seconds 1 >/dev/null # warm-up, not measured
        measure "$name" "$t" loadclient loadclient handshakes "$pki" "$t" --concurrency "$CONNS" --seconds "$DURATION"
    done
}

idle_memory() { # pki target scenario [loadclient args...]
    local pki=$1 target=$2 scenario=$3 pids before after client report
    shift 3
    read -r -a pids <<<"$(target_pids "$target")"
    before=$(rss_kib "${pids[@]}")
    # The binary itself in the background (not the shell function), so that $! is its pid.
    "$LOADCLIENT" idle --addr "127.0.0.1:$(target_port "$target")" --ca "$pki/ca.pem" --cert "$pki/user.pem" \
        --key "$pki/user.key" --connections "$IDLE_CONNS" "$@" >"$RUN/raw/idle.$target.json" 2>"$RUN/raw/idle.$target.err" &
    client=$!
    PIDS+=("$client")
    for _ in $(seq 1200); do
        [[ -s $RUN/raw/idle.$target.json ]] && break
        kill -0 "$client" 2>/dev/null || die "idle client for $target exited: $(tail -3 "$RUN/raw/idle.$target.err")"
        sleep 0.1
    done
    [[ -s $RUN/raw/idle.$target.json ]] || die "idle client for $target did not connect within 2 minutes"
    sleep 2 # let the gateway settle (tickets, buffers) before reading memory
    after=$(rss_kib "${pids[@]}")
    stop "$client"
    report=$(cat "$RUN/raw/idle.$target.json")
    python3 - "$scenario" "$target" "$before" "$after" "$report" >>"$RESULTS" <<'EOF'
import json, sys
scenario, target, before, after, report = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
n = report["connected"]
print(json.dumps(dict(scenario=scenario, target=target, connections=n, failed=report["failed"],
                      rss_before_kib=before, rss_after_kib=after,
                      kib_per_conn=(after - before) / n if n else None, first_error=report["first_error"])))
EOF
    log "  $scenario $target: $(tail -1 "$RESULTS")"
}

# ------------------------------------------------------------- report ----

report() {
    python3 - "$RESULTS" "$OUT/results.md" "$*" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
groups = {}
for r in rows:
    groups.setdefault((r["scenario"], r["target"]), []).append(r)
def median_of(rs):
    # Repeated runs (ROUNDS): the median of each number, failures summed.
    m = dict(rs[0])
    for k, v in rs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [r[k] for r in rs if r.get(k) is not None]
            m[k] = statistics.median(vals) if vals else None
    m["failed"] = sum(r.get("failed") or 0 for r in rs)
    m["runs"] = len(rs)
    return m
by = {k: median_of(v) for k, v in groups.items()}
out = []
def ratio(a, b):
    return "%.2f" % (a / b) if a is not None and b else "-"
def num(v, fmt):
    return fmt % v if v is not None else "-"
out.append(sys.argv[3])
out.append("")
out.append("Server CPU per operation (µs, lower is better) and throughput (req/s, the load client shares the machine); "
           "each ratio = the certgate column / the nginx column to its left (the last: certgate {N} threads / nginx); keep-alive rows are the median of %d interleaved runs:" % max(r["runs"] for r in by.values()))
out.append("")
out.append("| scenario | certgate 1 thread | nginx 1 worker | ratio | nginx lean 1 worker | ratio | certgate %s threads | ratio |" % "{N}")
out.append("|---|---|---|---|---|---|---|---|")
names = {
    "hs_ecdsa": "full handshake + 1 req, ECDSA P-256",
    "hs_rsa": "full handshake + 1 req, RSA-2048",
    "hs_oha_default": "new conn per req, oha defaults (resumes, X25519MLKEM768 offered)",
    "h1_keepalive": "HTTP/1.1 keep-alive",
    "h2": "HTTP/2",
    "grpc_1conn": "gRPC unary, 1 HTTP/2 connection x 8 streams",
    "grpc": "gRPC unary, {C} HTTP/2 connections x 4 streams",
}
for sc, label in names.items():
    cg1, ng, lean, cgn = (by.get((sc, t)) for t in ("cg1", "nginx", "nginx_lean", "cgN"))
    if not (cg1 and ng):
        continue
    cpu = lambda r: r and r["cpu_us_per_op"]
    rps = lambda r: r and r["rps"]
    for what, value, fmt in (("CPU µs/op", cpu, "%.1f"), ("req/s", rps, "%.0f")):
        out.append("| %s: %s | %s | %s | %s | %s | %s | %s | %s |" % (label, what, num(value(cg1), fmt), num(value(ng), fmt),
                   ratio(value(cg1), value(ng)), num(value(lean), fmt), ratio(value(cg1), value(lean)),
                   num(value(cgn), fmt), ratio(value(cgn), value(ng))))
shares = []
for sc in ("h1_keepalive", "h2"):
    for t, label in (("cg1", "certgate"), ("nginx", "nginx"), ("nginx_lean", "nginx lean")):
        r = by.get((sc, t))
        if r and r.get("cpu_s") and r.get("cpu_sys_s") is not None:
            shares.append("%s %s %.0f%%" % (names[sc], label, 100 * r["cpu_sys_s"] / r["cpu_s"]))
if shares:
    out += ["", "Kernel (stime) share of that server CPU: " + ", ".join(shares) + "."]
failed = [r for r in by.values() if r.get("failed")]
lat = [(t, by.get(("latency", t))) for t in ("direct", "cg1", "nginx", "cgN")]
if all(r for _, r in lat):
    d = by[("latency", "direct")]
    out += ["", "Latency at a fixed rate (ms); added = through the gateway minus direct to the upstream:", "",
            "| target | p50 | p99 | added p50 | added p99 | server CPU µs/req |", "|---|---|---|---|---|---|"]
    label = {"direct": "upstream direct (plain HTTP)", "cg1": "certgate 1 thread", "nginx": "nginx 1 worker", "cgN": "certgate {N} threads"}
    for t, r in lat:
        added = t != "direct"
        out.append("| %s | %.3f | %.3f | %s | %s | %s |" % (label[t], r["p50_ms"], r["p99_ms"],
                   "%.3f" % (r["p50_ms"] - d["p50_ms"]) if added else "-", "%.3f" % (r["p99_ms"] - d["p99_ms"]) if added else "-",
                   num(r["cpu_us_per_op"], "%.1f") if added else "-"))
    cg, ng = by[("latency", "cg1")], by[("latency", "nginx")]
    out.append("")
    out.append("certgate/nginx added p99: %s" % ratio(cg["p99_ms"] - d["p99_ms"], ng["p99_ms"] - d["p99_ms"]))
mem = [((s, t), by.get((s, t))) for s in ("idle_memory", "idle_memory_distinct") for t in ("cg1", "nginx")]
mem = [(k, r) for k, r in mem if r]
if mem:
    out += ["", "Resident memory per idle mTLS connection (VmRSS delta / connections; each completed one request):", "",
            "| client certificates | target | connections | RSS before (MiB) | RSS after (MiB) | KiB per connection |",
            "|---|---|---|---|---|---|"]
    certs = {"idle_memory": "one for all connections", "idle_memory_distinct": "one per connection"}
    for (s, t), r in mem:
        out.append("| %s | %s | %d | %.1f | %.1f | %.1f |" % (certs[s], {"cg1": "certgate", "nginx": "nginx"}[t], r["connections"],
                   r["rss_before_kib"] / 1024, r["rss_after_kib"] / 1024, r["kib_per_conn"]))
    out.append("")
    for s in certs:
        if (s, "cg1") in by and (s, "nginx") in by:
            out.append("certgate/nginx per connection, %s: %s" % (certs[s], ratio(by[(s, "cg1")]["kib_per_conn"], by[(s, "nginx")]["kib_per_conn"])))
if failed:
    out += ["", "Failed requests: " + ", ".join("%s/%s: %d (%s)" % (r["scenario"], r["target"], r["failed"], r.get("first_error")) for r in failed)]
text = "\n".join(out) + "\n"
open(sys.argv[2], "w").write(text)
print(text)
EOF
}

# --------------------------------------------------------------- main ----

# ------------------------------------------------------------ profile ----

# Syscalls the gateway makes per keep-alive HTTP/1.1 request (strace -c on
# every thread during a fixed number of requests).
syscalls_per_request() { # pki target
    local pki=$1 t=$2 pids args=() tracer n=20000 total
    read -r -a pids <<<"$(target_pids "$t")"
    for p in "${pids[@]}"; do args+=(-p "$p"); done
    strace -c -f -o "$OUT/profile/strace.$t.txt" "${args[@]}" 2>/dev/null &
    tracer=$!
    sleep 1
    env -u TOKIO_WORKER_THREADS "$OHA" --no-tui --output-format quiet -n "$n" -c "$CONNS" \
        --cacert "$pki/ca.pem" --cert "$pki/user.pem" --key "$pki/user.key" \
        "https://localhost:$(target_port "$t")/api/bench"
    kill -INT "$tracer"
    wait "$tracer" || true
    total=$(awk '$NF == "total" {print $(NF-2)}' "$OUT/profile/strace.$t.txt")
    echo "$t: $(awk -v a="$total" -v n="$n" 'BEGIN {printf "%.2f", a / n}') syscalls per request" |
        tee -a "$OUT/profile/summary.txt" >&2
    sort -k4 -n -r "$OUT/profile/strace.$t.txt" | head -12 >>"$OUT/profile/summary.txt"
}

callgrind_total() { # file: instructions counted in a callgrind dump
    awk '/^(summary|totals):/ {print $2; exit}' "$1"
}

# Instructions per operation under callgrind, gateway by gateway: zero the
# counters, run a fixed load, dump. Counts are exact and immune to the noise
# of a shared machine (user space only; syscalls are counted above).
callgrind_ops() { # pki target pid
    local pki=$1 t=$2 pid=$3 dir=$OUT/profile out ok n=10000 f
    local tls=(--cacert "$pki/ca.pem" --cert "$pki/user.pem" --key "$pki/user.key")
    local url
    url="https://localhost:$(target_port "$t")/api/bench"
    env -u TOKIO_WORKER_THREADS "$OHA" --no-tui --output-format quiet -n 200 -c 8 "${tls[@]}" "$url" # warm-up
    callgrind_control -z "$pid" >/dev/null
    env -u TOKIO_WORKER_THREADS "$OHA" --no-tui --output-format quiet -n "$n" -c 8 "${tls[@]}" "$url"
    callgrind_dump "$pid" "$dir/callgrind.$t.keepalive"
    env -u TOKIO_WORKER_THREADS "$OHA" --no-tui --output-format quiet -n "$n" --http2 -c 2 -p 4 "${tls[@]}" "$url"
    callgrind_dump "$pid" "$dir/callgrind.$t.h2"
    out=$(loadclient handshakes "$pki" "$t" --concurrency 4 --seconds 20)
    callgrind_dump "$pid" "$dir/callgrind.$t.handshakes"
    ok=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ok"])' "$out")
    {
        echo "$t: $(($(callgrind_total "$dir/callgrind.$t.keepalive") / n)) instructions per keep-alive HTTP/1.1 request (incl. 8 handshakes over $n requests)"
        echo "$t: $(($(callgrind_total "$dir/callgrind.$t.h2") / n)) instructions per HTTP/2 request (2 connections x 4 streams, incl. 2 handshakes over $n requests)"
        echo "$t: $(($(callgrind_total "$dir/callgrind.$t.handshakes") / ok)) instructions per full handshake + 1 request ($ok handshakes)"
    } | tee -a "$dir/summary.txt" >&2
    for f in keepalive h2 handshakes; do
        callgrind_annotate --inclusive=yes "$dir/callgrind.$t.$f" >"$dir/callgrind.$t.$f.inclusive.txt" 2>/dev/null || true
        callgrind_self "$dir/callgrind.$t.$f" "$([[ $f == handshakes ]] && echo "$ok" || echo "$n")" >"$dir/callgrind.$t.$f.self.txt"
    done
}

# Instructions spent in each function itself, per operation (callgrind_annotate's
# exclusive view puts everything on the thread entry for dumps taken mid-run;
# this reads the counts from the file instead).
callgrind_self() { # file ops
    python3 - "$1" "$2" <<'EOF'
import collections, re, sys
names, cost = {}, collections.Counter()
def name(kind, text):
    m = re.match(r"\((\d+)\)(?: (.*))?", text)
    if not m:
        return text
    if m.group(2) is not None:
        names[kind, m.group(1)] = m.group(2)
    return names.get((kind, m.group(1)), text)
fn, after_call, total = None, False, 0
for line in open(sys.argv[1]):
    line = line.rstrip("\n")
    key, _, rest = line.partition("=")
    if key == "fn":
        fn = name("fn", rest)
    elif key == "cfn":
        name("fn", rest)
    elif key == "calls":
        after_call = True  # the next cost line is the call's inclusive cost
    elif line[:1].isdigit() or line[:1] in "+-*":
        fields = line.split()
        if not after_call and fn and len(fields) > 1:
            cost[fn] += int(fields[1])
        after_call = False
    elif line.startswith("summary:"):
        total = int(line.split()[1])
ops = int(sys.argv[2])
print("instructions per operation: %d (%d operations)" % (total // ops, ops))
for f, c in cost.most_common(40):
    print("%6.2f%% %8d  %s" % (100.0 * c / total, c // ops, f[:160]))
EOF
}

callgrind_dump() { # pid name: dump the counters since the last zeroing into `name`, then zero
    local pid=$1 name=$2 f newest=""
    callgrind_control -d "$pid" >/dev/null
    for f in "$OUT/profile/callgrind."*".$pid."*; do
        if [[ -z $newest || $f -nt $newest ]]; then newest=$f; fi
    done
    mv "$newest" "$name"
    callgrind_control -z "$pid" >/dev/null
}

profile() {
    local pki=$RUN/pki/ecdsa
    rm -rf "$OUT/profile"
    mkdir -p "$OUT/profile"
    log "syscalls per keep-alive request (strace)"
    start_certgate cg1 "$pki" 1
    start_nginx_gateway "$pki"
    start_nginx_lean "$pki"
    syscalls_per_request "$pki" cg1
    syscalls_per_request "$pki" nginx
    syscalls_per_request "$pki" nginx_lean
    stop "${PID[cg1]}"
    stop "${PID[nginx]}"
    stop "${PID[nginx_lean]}"

    log "instructions per operation (callgrind; slow)"
    WRAP=(valgrind --tool=callgrind --callgrind-out-file="$OUT/profile/callgrind.cg1.%p")
    start_certgate cg1 "$pki" 1
    callgrind_ops "$pki" cg1 "${PID[cg1]}"
    stop "${PID[cg1]}"
    WRAP=(valgrind --tool=callgrind --callgrind-out-file="$OUT/profile/callgrind.nginx.%p")
    NGINX_MASTER=off start_nginx_gateway "$pki"
    callgrind_ops "$pki" nginx "${PID[nginx]}"
    stop "${PID[nginx]}"
    WRAP=(valgrind --tool=callgrind --callgrind-out-file="$OUT/profile/callgrind.nginx_lean.%p")
    NGINX_MASTER=off start_nginx_lean "$pki"
    callgrind_ops "$pki" nginx_lean "${PID[nginx_lean]}"
    stop "${PID[nginx_lean]}"
    WRAP=(env)
    log "profiles in $OUT/profile:"
    cat "$OUT/profile/summary.txt"
}

prepare() {
    mkdir -p "$OUT"
    rm -rf "$RUN"
    mkdir -p "$RUN/raw"
    start_oha_install
    ensure_packages nginx openssl python3 curl
    if want grpc; then
        "$ROOT/tests/fixtures/python/setup" # grpcio, for check_grpc
    fi
    if [[ ${1:-} == profile ]]; then
        ensure_packages strace valgrind
    fi
    build
    make_pkis
    wait_oha_install
    start_upstream
}

want() { [[ " $SCENARIOS " == *" $1 "* ]]; }

compare() {
    : >"$RESULTS"
    local ecdsa=$RUN/pki/ecdsa rsa=$RUN/pki/rsa t n machine
    n=$(nproc)
    machine="Machine: $n cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg). certgate $("$CERTGATE" --version | awk '{print $2}'), $(nginx -v 2>&1 | sed 's/.*: //') with $(openssl version | awk '{print $1, $2}'), oha $("$OHA" --version | awk '{print $2}'). ${DURATION}s per run, $CONNS connections."
    log "$machine"

    if want hs_rsa; then
        log "RSA-2048 PKI"
        gateways_up "$rsa"
        handshake_scenario hs_rsa "$rsa"
        gateways_down
    fi

    log "ECDSA P-256 PKI"
    gateways_up "$ecdsa"
    if want hs_ecdsa; then
        handshake_scenario hs_ecdsa "$ecdsa"
    fi
    if want hs_oha_default; then
        for t in cg1 nginx cgN; do
            measure hs_oha_default "$t" oha oha_tls "$ecdsa" "$t" -c "$CONNS" --disable-keepalive -w
        done
    fi
    for _ in $(seq "$ROUNDS"); do
        if want h1_keepalive; then
            for t in cg1 nginx nginx_lean cgN; do
                measure h1_keepalive "$t" oha oha_tls "$ecdsa" "$t" -c "$CONNS" -w
            done
        fi
        if want h2; then
            for t in cg1 nginx nginx_lean cgN; do
                measure h2 "$t" oha oha_tls "$ecdsa" "$t" --http2 -c $((CONNS / 4)) -p 4
            done
        fi
    done
    if want latency; then
        # Twice as long as the other runs, so that the first request of each
        # connection (which waits for its handshake) stays far below p99.
        measure latency direct oha env -u TOKIO_WORKER_THREADS "$OHA" --no-tui --output-format json \
            -z "$((2 * DURATION))s" -q "$RATE" -c 8 -w "http://127.0.0.1:$UP_PORT/api/bench"
        for t in cg1 nginx cgN; do
            DURATION=$((2 * DURATION)) measure latency "$t" oha oha_tls "$ecdsa" "$t" -q "$RATE" -c 8 -w
        done
    fi
    gateways_down

    if want grpc; then
        grpc_scenarios "$ecdsa"
    fi

    if want idle_memory; then
        log "idle memory: $IDLE_CONNS connections against fresh processes"
        for variant in one distinct; do
            local scenario=idle_memory args=()
            if [[ $variant == distinct ]]; then
                scenario=idle_memory_distinct
                args=(--distinct-certs --ca-key "$ecdsa/ca.key")
            fi
            start_certgate cg1 "$ecdsa" 1
            idle_memory "$ecdsa" cg1 "$scenario" "${args[@]}"
            stop "${PID[cg1]}"
            start_nginx_gateway "$ecdsa"
            idle_memory "$ecdsa" nginx "$scenario" "${args[@]}"
            stop "${PID[nginx]}"
        done
    fi

    report "$machine" | sed "s/{N}/$n/g; s/{C}/$((CONNS / 4))/g"
    sed -i "s/{N}/$n/g; s/{C}/$((CONNS / 4))/g" "$OUT/results.md"
}

main() {
    case ${1:-compare} in
    compare) prepare && compare ;;
    profile) prepare profile && profile ;;
    *) die "usage: $0 [compare|profile]" ;;
    esac
}

main "$@"
