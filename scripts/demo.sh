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
# MQTT=1 (make demo MQTT=1): the device side gets its tokens as on a fleet, from an MQTT broker
# instead of a file. A mosquitto broker with TLS and required client certificates stands in for
# AWS IoT Core (Tests/Peers/mqtt_broker.py makes its certificates and configuration), the
# emulator publishes each destination token to it (--mqtt-broker), and the device-side proxy
# runs in agent mode (--mqtt-endpoint --thing-name --cert --key, docs/AGENT.md): started before
# the tunnel exists, it connects when the notification arrives, follows the rotation, and keeps
# listening when the tunnel closes, until the demo stops it.
#
# Everything it starts is stopped at the end, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-$(swift build --show-bin-path)}
SOURCE_PORT=${SOURCE_PORT:-5555}
MQTT=${MQTT:-0}
THING=demo-gateway
WORK=$(mktemp -d /tmp/localproxy-demo.XXXXXX)
PIDS=()

STEP=0
step() { STEP=$((STEP + 1)); printf '\n\033[1m== %d. %s\033[0m\n' "$STEP" "$*"; }
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

# Waits (up to $2 seconds) until file $1 has at least $4 lines containing the text $3.
wait_count() {
    local file=$1 seconds=$2 text=$3 count=$4 i
    for ((i = 0; i < seconds * 10; i++)); do
        [ "$(grep -c -- "$text" "$file" 2>/dev/null)" -ge "$count" ] && return 0
        sleep 0.1
    done
    fail "waited ${seconds}s for $count lines with '$text' in $(basename "$file")"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The AWS CLI with dummy credentials, pointed at the emulator's control plane.
export AWS_ACCESS_KEY_ID=AKIADEMODEMODEMO AWS_SECRET_ACCESS_KEY=demo-secret AWS_DEFAULT_REGION=us-east-1
AWS_CLI=$(command -v aws || echo "$PWD/.venv/bin/aws")
awsst() { "$AWS_CLI" iotsecuretunneling --endpoint-url "$API" --output json "$@"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

EMULATOR_MQTT=()
if [ "$MQTT" = 1 ]; then
    step "Start an MQTT broker standing in for AWS IoT Core"
    command -v mosquitto > /dev/null || [ -x /usr/sbin/mosquitto ] || fail "mosquitto is not installed (make deps installs it)"
    PYTHON=${PYTHON:-$PWD/.venv/bin/python}
    "$PYTHON" Tests/Peers/mqtt_broker.py "$WORK/mqtt" --device "$THING" > "$WORK/broker.out" 2> "$WORK/broker.log" &
    PIDS+=($!)
    wait_for "$WORK/broker.out" 60 "^ready"
    MQTT_PORT=$(sed -n 's/^port //p' "$WORK/broker.out")
    MQTT_CA=$(sed -n 's/^ca //p' "$WORK/broker.out")
    read -r DEVICE_CERT DEVICE_KEY_SOURCE < <(sed -n "s/^device $THING //p" "$WORK/broker.out")
    read -r PUBLISHER_CERT PUBLISHER_KEY < <(sed -n 's/^publisher //p' "$WORK/broker.out")
    DEVICE_KEY="$WORK/device.key"
    install -m 0600 "$DEVICE_KEY_SOURCE" "$DEVICE_KEY"
    note "mosquitto on 127.0.0.1:$MQTT_PORT: TLS, a client certificate required from every client,"
    note "an ACL that lets the device ($THING) read only \$aws/things/$THING/tunnels/notify"
    EMULATOR_MQTT=(--mqtt-broker "127.0.0.1:$MQTT_PORT" --mqtt-ca "$MQTT_CA" --mqtt-cert "$PUBLISHER_CERT" --mqtt-key "$PUBLISHER_KEY")
fi

step "Start the tunneling service emulator"
"$BIN/tunnel-service" --state-dir "$WORK/service" "${EMULATOR_MQTT[@]}" > "$WORK/service.out" 2> "$WORK/service.log" &
PIDS+=($!)
wait_for "$WORK/service.out" 30 "^ready"
DATA=$(sed -n 's/^data-plane //p' "$WORK/service.out")
API=$(sed -n 's/^control-plane //p' "$WORK/service.out")
CA=$(sed -n 's/^ca //p' "$WORK/service.out")
note "data plane    wss://$DATA   (TLS, certificate signed by $CA)"
note "control plane $API"
[ "$MQTT" = 1 ] && note "it publishes destination tokens to the broker, as the service does to AWS IoT"

step "A local service for the device to expose"
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

if [ "$MQTT" = 1 ]; then
    step "Start the device-side proxy in agent mode (before the tunnel exists)"
    note "localproxy --mqtt-endpoint 127.0.0.1:$MQTT_PORT --thing-name $THING --cert device.pem --key device.key"
    note "           -c ca.pem,mqtt-ca.pem -e $DATA -d SSH=$SERVICE_PORT"
    "$BIN/localproxy" --mqtt-endpoint "127.0.0.1:$MQTT_PORT" --thing-name "$THING" --cert "$DEVICE_CERT" --key "$DEVICE_KEY" \
        -c "$CA,$MQTT_CA" -e "$DATA" -d "SSH=$SERVICE_PORT" > /dev/null 2> "$WORK/destination.log" &
    DEST_PID=$!
    PIDS+=($DEST_PID)
    wait_for "$WORK/destination.log" 30 "subscribed to"
    note "$(grep -h 'subscribed to' "$WORK/destination.log" | sed 's/.*agent: //')"
fi

step "Open a tunnel with the AWS CLI"
note "aws iotsecuretunneling open-tunnel --destination-config thingName=$THING,services=SSH"
awsst open-tunnel --description "localproxy demo" \
    --destination-config thingName=$THING,services=SSH > "$WORK/tunnel.json"
TUNNEL_ID=$(json "['tunnelId']" < "$WORK/tunnel.json")
umask 077
json "['destinationAccessToken']" < "$WORK/tunnel.json" > "$WORK/destination.token"
json "['sourceAccessToken']" < "$WORK/tunnel.json" > "$WORK/source.token"
umask 022
note "tunnel $TUNNEL_ID; the two single-use access tokens are in files only this user can read"

if [ "$MQTT" = 1 ]; then
    wait_for "$WORK/destination.log" 30 "connected to wss"
    note "the agent got the destination token from the broker and connected:"
    grep -h "starting tunnel session\|connected to wss" "$WORK/destination.log" | sed 's/^/   | /'
else
    step "Start the device-side proxy (destination mode)"
    note "localproxy -e $DATA -c ca.pem --access-token-file destination.token -d SSH=$SERVICE_PORT"
    "$BIN/localproxy" -e "$DATA" -c "$CA" --access-token-file "$WORK/destination.token" \
        -d "SSH=$SERVICE_PORT" > /dev/null 2> "$WORK/destination.log" &
    DEST_PID=$!
    PIDS+=($DEST_PID)
    wait_for "$WORK/destination.log" 30 "connected to"
fi

step "Start the laptop-side proxy (source mode) on port $SOURCE_PORT"
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

step "A session through the tunnel"
session

step "Rotate both access tokens"
note "aws iotsecuretunneling rotate-tunnel-access-token --client-mode ALL"
awsst rotate-tunnel-access-token --tunnel-id "$TUNNEL_ID" --client-mode ALL \
    --destination-config thingName=$THING,services=SSH > "$WORK/rotated.json"
umask 077
json "['destinationAccessToken']" < "$WORK/rotated.json" > "$WORK/destination.token.new"
json "['sourceAccessToken']" < "$WORK/rotated.json" > "$WORK/source.token.new"
umask 022
[ "$MQTT" = 1 ] || mv "$WORK/destination.token.new" "$WORK/destination.token"
mv "$WORK/source.token.new" "$WORK/source.token"
if [ "$MQTT" = 1 ]; then
    note "the old tokens are revoked and both proxies were disconnected; the emulator published the new"
    note "destination token to the broker, the new source token is in its file"
    wait_for "$WORK/destination.log" 30 "starting tunnel session 2"
    wait_count "$WORK/destination.log" 30 "connected to wss" 2
    wait_for "$WORK/source.log" 30 "new access token"
    wait_count "$WORK/source.log" 30 "connected to wss" 2
    note "the agent followed the notification, the source its token file:"
    grep -h "starting tunnel session 2" "$WORK/destination.log" | sed 's/^/   | /'
    grep -h "new access token" "$WORK/source.log" | sed 's/^/   | /'
else
    note "the old tokens are revoked and both proxies were disconnected; the new tokens are in their files"
    wait_for "$WORK/destination.log" 30 "new access token"
    wait_for "$WORK/source.log" 30 "new access token"
    wait_count "$WORK/source.log" 30 "connected to wss" 2
    note "both proxies reconnected with the new tokens:"
    grep -h "new access token" "$WORK/destination.log" "$WORK/source.log" | sed 's/^/   | /'
fi
sleep 0.5
session

step "Close the tunnel"
note "aws iotsecuretunneling close-tunnel"
awsst close-tunnel --tunnel-id "$TUNNEL_ID" > /dev/null
if [ "$MQTT" = 1 ]; then
    wait_for "$WORK/destination.log" 30 "tunnel session 2 ended"
    note "the agent ended the session and keeps listening for the next notification:"
    grep -h "tunnel session 2 ended" "$WORK/destination.log" | sed 's/^/   | /'
    note "stopping the agent (SIGTERM), as the init system would"
    kill -TERM "$DEST_PID"
fi
set +e
wait "$DEST_PID"; DEST_RC=$?
wait "$SRC_PID"; SRC_RC=$?
set -e
note "destination proxy exited with $DEST_RC: $(grep -h 'exiting\|agent: stopping' "$WORK/destination.log" | tail -n 1)"
note "source proxy exited with $SRC_RC: $(grep -h 'exiting' "$WORK/source.log" | tail -n 1)"
[ "$DEST_RC" = 0 ] && [ "$SRC_RC" = 0 ] || fail "a proxy did not exit cleanly"
awsst describe-tunnel --tunnel-id "$TUNNEL_ID" > "$WORK/describe.json"
note "describe-tunnel: status $(json "['tunnel']['status']" < "$WORK/describe.json")"

if [ "$MQTT" = 1 ]; then
    printf '\nDEMO OK (MQTT): the device took its tokens from the broker; a %s session crossed the tunnel before and after token rotation; the agent outlived the tunnel and both proxies exited 0.\n' "$MODE"
else
    printf '\nDEMO OK: a %s session crossed the tunnel before and after token rotation, and both proxies exited 0 when the tunnel closed.\n' "$MODE"
fi
