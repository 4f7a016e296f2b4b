#!/usr/bin/env bash
# make demo: a whole secure tunnel on this machine, with no cloud.
#
#   1. start the tunneling service emulator (data plane + control plane on 127.0.0.1)
#   2. open a tunnel with the AWS CLI, exactly as against AWS (only --endpoint-url differs)
#   3. start the device-side proxy (destination) and the laptop-side proxy (source, port 5555)
#   4. carry a real SSH session through the tunnel (a throwaway sshd on a loopback port), or,
#      without openssh-server, a checksum-verified transfer through an echo service
#   5. rotate both access tokens: the proxies pick up the new tokens and reconnect
#   6. close the tunnel: both proxies exit by themselves, with exit code 0
#
# Everything it starts is stopped at the end, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-$(swift build --show-bin-path)}
SOURCE_PORT=${SOURCE_PORT:-5555}
WORK=$(mktemp -d /tmp/localproxy-demo.XXXXXX)
PIDS=()

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }
fail() { printf '\nDEMO FAILED: %s\n' "$*" >&2; for f in "$WORK"/*.log; do echo "--- $f" >&2; tail -n 15 "$f" >&2; done; exit 1; }

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo; echo "interrupted"; exit 130' INT TERM

# Waits (up to $2 seconds) until file $1 contains the text $3.
wait_for() {
    local file=$1 seconds=$2 text=$3 i
    for ((i = 0; i < seconds * 10; i++)); do
        grep -q -- "$text" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    fail "waited ${seconds}s for '$text' in $(basename "$file")"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The AWS CLI with dummy credentials, pointed at the emulator's control plane.
export AWS_ACCESS_KEY_ID=AKIADEMODEMODEMO AWS_SECRET_ACCESS_KEY=demo-secret AWS_DEFAULT_REGION=us-east-1
AWS_CLI=$(command -v aws || echo "$PWD/.venv/bin/aws")
awsst() { "$AWS_CLI" iotsecuretunneling --endpoint-url "$API" --output json "$@"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

step "1. Start the tunneling service emulator"
"$BIN/tunnel-service" --state-dir "$WORK/service" > "$WORK/service.out" 2> "$WORK/service.log" &
PIDS+=($!)
wait_for "$WORK/service.out" 30 "^ready"
DATA=$(sed -n 's/^data-plane //p' "$WORK/service.out")
API=$(sed -n 's/^control-plane //p' "$WORK/service.out")
CA=$(sed -n 's/^ca //p' "$WORK/service.out")
note "data plane    wss://$DATA   (TLS, certificate signed by $CA)"
note "control plane $API"

step "2. Open a tunnel with the AWS CLI"
note "aws iotsecuretunneling open-tunnel --destination-config thingName=demo-gateway,services=SSH"
awsst open-tunnel --description "localproxy demo" \
    --destination-config thingName=demo-gateway,services=SSH > "$WORK/tunnel.json"
TUNNEL_ID=$(json "['tunnelId']" < "$WORK/tunnel.json")
umask 077
json "['destinationAccessToken']" < "$WORK/tunnel.json" > "$WORK/destination.token"
json "['sourceAccessToken']" < "$WORK/tunnel.json" > "$WORK/source.token"
umask 022
note "tunnel $TUNNEL_ID; the two single-use access tokens are in files only this user can read"

step "3. A local service for the device to expose"
SERVICE_PORT=$(free_port)
if command -v /usr/sbin/sshd > /dev/null; then
    MODE=ssh
    mkdir -p /run/sshd "$WORK/ssh"
    ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh/user_key"
    cp "$WORK/ssh/user_key.pub" "$WORK/ssh/authorized_keys"
    cat > "$WORK/ssh/sshd_config" <<EOF
Port $SERVICE_PORT
ListenAddress 127.0.0.1
HostKey $WORK/ssh/host_key
AuthorizedKeysFile $WORK/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
UsePAM no
PidFile $WORK/ssh/sshd.pid
Subsystem sftp internal-sftp
EOF
    /usr/sbin/sshd -D -e -f "$WORK/ssh/sshd_config" 2> "$WORK/sshd.log" &
    PIDS+=($!)
    note "a throwaway sshd on 127.0.0.1:$SERVICE_PORT (its own host key and user key)"
else
    MODE=echo
    python3 -c "
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', $SERVICE_PORT)); s.listen()
def serve(c):
    while (d := c.recv(65536)): c.sendall(d)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
" &
    PIDS+=($!)
    note "openssh-server is not installed: an echo service on 127.0.0.1:$SERVICE_PORT instead"
fi

step "4. Start the device-side proxy (destination mode)"
note "localproxy -e $DATA -c ca.pem --access-token-file destination.token -d SSH=$SERVICE_PORT"
"$BIN/localproxy" -e "$DATA" -c "$CA" --access-token-file "$WORK/destination.token" \
    -d "SSH=$SERVICE_PORT" > /dev/null 2> "$WORK/destination.log" &
DEST_PID=$!
PIDS+=($DEST_PID)
wait_for "$WORK/destination.log" 30 "connected to"

step "5. Start the laptop-side proxy (source mode) on port $SOURCE_PORT"
note "localproxy -e $DATA -c ca.pem --access-token-file source.token -s SSH=$SOURCE_PORT"
"$BIN/localproxy" -e "$DATA" -c "$CA" --access-token-file "$WORK/source.token" \
    -s "SSH=$SOURCE_PORT" > /dev/null 2> "$WORK/source.log" &
SRC_PID=$!
PIDS+=($SRC_PID)
wait_for "$WORK/source.log" 30 "listening for service SSH"
awsst describe-tunnel --tunnel-id "$TUNNEL_ID" > "$WORK/describe.json"
note "describe-tunnel: source $(json "['tunnel']['sourceConnectionState']['status']" < "$WORK/describe.json"), destination $(json "['tunnel']['destinationConnectionState']['status']" < "$WORK/describe.json")"

SSH_OPTS=(-p "$SOURCE_PORT" -i "$WORK/ssh/user_key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes)
session() {
    if [ "$MODE" = ssh ]; then
        note "ssh -p $SOURCE_PORT root@127.0.0.1 'echo ...; uname -sr'"
        ssh "${SSH_OPTS[@]}" root@127.0.0.1 "echo hello from \$(hostname) through the tunnel; uname -sr" | sed 's/^/   | /' \
            || fail "ssh through the tunnel failed"
        head -c $((20 * 1024 * 1024)) /dev/urandom > "$WORK/payload.bin"
        note "scp of 20 MiB to the device and back"
        scp -q -P "$SOURCE_PORT" -i "$WORK/ssh/user_key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
            -o LogLevel=ERROR -o BatchMode=yes "$WORK/payload.bin" "root@127.0.0.1:$WORK/payload.copy" || fail "scp failed"
        local a b
        a=$(sha256sum < "$WORK/payload.bin" | cut -c1-16); b=$(sha256sum < "$WORK/payload.copy" | cut -c1-16)
        [ "$a" = "$b" ] || fail "checksums differ: $a vs $b"
        note "sha256 $a… on both ends"
    else
        head -c $((20 * 1024 * 1024)) /dev/urandom > "$WORK/payload.bin"
        python3 - "$SOURCE_PORT" "$WORK/payload.bin" <<'EOF' || fail "echo transfer through the tunnel failed"
import hashlib, socket, sys, threading
data = open(sys.argv[2], "rb").read()
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)), daemon=True).start()
got = bytearray()
while len(got) < len(data) and (chunk := s.recv(65536)): got += chunk
assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), "checksums differ"
print(f"   20 MiB echoed through the tunnel, sha256 {hashlib.sha256(data).hexdigest()[:16]}… on both ends")
EOF
    fi
}

step "6. A session through the tunnel"
session

step "7. Rotate both access tokens"
note "aws iotsecuretunneling rotate-tunnel-access-token --client-mode ALL"
awsst rotate-tunnel-access-token --tunnel-id "$TUNNEL_ID" --client-mode ALL \
    --destination-config thingName=demo-gateway,services=SSH > "$WORK/rotated.json"
umask 077
json "['destinationAccessToken']" < "$WORK/rotated.json" > "$WORK/destination.token.new"
json "['sourceAccessToken']" < "$WORK/rotated.json" > "$WORK/source.token.new"
umask 022
mv "$WORK/destination.token.new" "$WORK/destination.token"
mv "$WORK/source.token.new" "$WORK/source.token"
note "the old tokens are revoked and both proxies were disconnected; the new tokens are in their files"
wait_for "$WORK/destination.log" 30 "new access token"
wait_for "$WORK/source.log" 30 "new access token"
wait_for "$WORK/source.log" 30 "connected to.*" 
note "both proxies reconnected with the new tokens:"
grep -h "new access token" "$WORK/destination.log" "$WORK/source.log" | sed 's/^/   | /'
sleep 0.5
session

step "8. Close the tunnel"
note "aws iotsecuretunneling close-tunnel"
awsst close-tunnel --tunnel-id "$TUNNEL_ID" > /dev/null
set +e
wait "$DEST_PID"; DEST_RC=$?
wait "$SRC_PID"; SRC_RC=$?
set -e
note "destination proxy exited with $DEST_RC: $(grep -h 'exiting' "$WORK/destination.log" | tail -n 1)"
note "source proxy exited with $SRC_RC: $(grep -h 'exiting' "$WORK/source.log" | tail -n 1)"
[ "$DEST_RC" = 0 ] && [ "$SRC_RC" = 0 ] || fail "a proxy did not exit cleanly"
awsst describe-tunnel --tunnel-id "$TUNNEL_ID" > "$WORK/describe.json"
note "describe-tunnel: status $(json "['tunnel']['status']" < "$WORK/describe.json")"

printf '\nDEMO OK: a %s session crossed the tunnel before and after token rotation, and both proxies exited 0 when the tunnel closed.\n' "$MODE"
