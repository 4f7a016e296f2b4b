"""End-to-end tests of the `tunnel-service` emulator with real clients.

The control plane is driven with the AWS CLI (as a user would) and the data plane with Python's
`websockets` over TLS, trusting the CA the emulator generated. Tunnel messages are built and
parsed with the reference protobuf runtime (`pb` fixture in conftest.py), so the emulator's
relaying is checked against an independent implementation of the schema.

Close codes and status codes for behaviour the service does not document are the emulator's
choices (`Rejection` and `DataPlaneClose` in Sources/TunnelService); these tests pin them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import time
import uuid

import pytest
from websockets.exceptions import ConnectionClosed

from emulator import V1, V2, V3, WAIT, RawClient, frame_message, split_messages, start_emulator  # noqa: F401

CHANNEL_ID = re.compile(r"[0-9a-f]{16}-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{16}-[0-9a-f]{8}")
USED = "Invalid access token: The access token was previously used and can not be used again."
MISMATCH = "Invalid client token: The provided client token does not match the client token that was previously set."
MAX_FRAME = 131_076


def run(scenario, timeout: float = 120.0):
    async def bounded():
        return await asyncio.wait_for(scenario, timeout)

    return asyncio.run(bounded())


def client_token() -> str:
    return str(uuid.uuid4())


def message(pb, mtype, stream=0, service="", conn=0, payload=b"", ignorable=False, ids=()) -> bytes:
    m = pb.Message()
    m.type = mtype
    m.streamId = stream
    m.ignorable = ignorable
    m.payload = payload
    m.serviceId = service
    m.connectionId = conn
    m.availableServiceIds.extend(ids)
    return m.SerializeToString()


async def recv_frame(ws, timeout: float = WAIT) -> bytes:
    data = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(data, bytes), "the emulator sent a text frame"
    return data


class MessageReader:
    """Whole tunnel messages from a connection, whatever the framing: bytes of a message cut
    across frames are kept for the next call."""

    def __init__(self, ws):
        self.ws = ws
        self.buffer = b""
        self.frames: list[int] = []

    async def read(self, count: int) -> list[bytes]:
        out = []
        while True:
            while len(out) < count and len(self.buffer) >= 2:
                n = int.from_bytes(self.buffer[:2], "big")
                if len(self.buffer) < 2 + n:
                    break
                out.append(self.buffer[2:2 + n])
                self.buffer = self.buffer[2 + n:]
            if len(out) == count:
                return out
            frame = await recv_frame(self.ws)
            assert len(frame) <= MAX_FRAME
            self.frames.append(len(frame))
            self.buffer += frame


async def recv_messages(ws, count: int, frames: list | None = None) -> list[bytes]:
    """Reads frames until exactly `count` whole tunnel messages arrived (no bytes left over);
    records frame sizes."""
    reader = MessageReader(ws)
    out = await reader.read(count)
    assert reader.buffer == b"", "more bytes arrived than the messages expected"
    if frames is not None:
        frames.extend(reader.frames)
    return out


async def expect_close(ws, timeout: float = WAIT) -> tuple[int, str]:
    """Waits for the emulator's close frame (data before it is skipped)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, f"the connection ended without a close frame from the emulator: {closed!r}"
        return closed.rcvd.code, closed.rcvd.reason


async def sync(ws):
    """A ping round trip: the emulator has processed everything sent before it."""
    pong = await ws.ping(b"sync")
    await asyncio.wait_for(pong, WAIT)


@pytest.fixture
def emu(start_emulator):
    return start_emulator()


# ==============================================================================================
# Start-up and shutdown
# ==============================================================================================


def test_start_lines_certificates_and_reuse(start_emulator, tmp_path):
    first = start_emulator(state=tmp_path)
    assert first.data_host == "127.0.0.1"
    assert first.api_url.startswith("http://127.0.0.1:")
    assert first.ca == str(tmp_path / "ca.pem")
    ca = (tmp_path / "ca.pem").read_bytes()
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0, "the server key must be private"
    assert first.stop() == 0
    second = start_emulator(state=tmp_path)
    assert (tmp_path / "ca.pem").read_bytes() == ca, "a later start must reuse the generated CA"
    assert second.data_port and second.ca == first.ca


def test_sigterm_closes_every_websocket_and_exits_0(start_emulator, pb):
    emu = start_emulator()
    tunnel = emu.open_tunnel(services=["SSH"])

    async def scenario():
        src = await emu.connect("source", tunnel["sourceAccessToken"])
        dst = await emu.connect("destination", tunnel["destinationAccessToken"])
        await recv_frame(src)
        await recv_frame(dst)
        emu.process.send_signal(15)
        return await expect_close(src), await expect_close(dst)

    closes = run(scenario())
    assert closes == ((1001, "service shutting down"), (1001, "service shutting down"))
    assert emu.process.wait(timeout=WAIT) == 0


def test_garbage_on_both_ports_does_not_hurt(emu):
    import socket

    # Not TLS at all, then TLS with a non-HTTP request, then HTTP garbage on the API port.
    for payload in (b"\x16\x03\x01\x00\x05hello", os.urandom(3000), b"GET / HTTP/1.1\r\n\r\n"):
        with socket.create_connection((emu.data_host, emu.data_port), timeout=WAIT) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(WAIT)
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass  # closed with our bytes unread: the kernel answers with a reset
    raw = RawClient(emu)
    raw.send(b"\x00\x01\x02 not an HTTP request\r\n\r\n")
    status, _, body = raw.read_response()
    assert status == 400 and body
    raw.close()
    host, port = emu.api_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=WAIT) as s:
        s.sendall(b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 400")
    # Still serving.
    status, out = emu.api("ListTunnels")
    assert status == 200 and "tunnelSummaries" in out
    assert emu.alive()


# ==============================================================================================
# Control plane through the AWS CLI
# ==============================================================================================


def test_cli_open_describe_list_close_delete(emu):
    thing = f"thing-{uuid.uuid4().hex[:8]}"
    opened = emu.aws("open-tunnel", "--description", "a test tunnel",
                     "--destination-config", f"thingName={thing},services=SSH,HTTP",
                     "--timeout-config", "maxLifetimeTimeoutMinutes=30", "--tags", "key=team,value=edge")
    tunnel_id = opened["tunnelId"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", tunnel_id)
    assert opened["tunnelArn"] == f"arn:aws:iot:us-east-1:123456789012:tunnel/{tunnel_id}"
    source, destination = opened["sourceAccessToken"], opened["destinationAccessToken"]
    assert source != destination and len(source) >= 1000 and len(destination) >= 1000

    tunnel = emu.aws("describe-tunnel", "--tunnel-id", tunnel_id)["tunnel"]
    assert tunnel["status"] == "OPEN"
    assert tunnel["description"] == "a test tunnel"
    assert tunnel["destinationConfig"] == {"thingName": thing, "services": ["SSH", "HTTP"]}
    assert tunnel["timeoutConfig"] == {"maxLifetimeTimeoutMinutes": 30}
    assert tunnel["tags"] == [{"key": "team", "value": "edge"}]
    assert tunnel["sourceConnectionState"]["status"] == "DISCONNECTED"
    assert tunnel["destinationConnectionState"]["status"] == "DISCONNECTED"
    assert isinstance(tunnel["createdAt"], (int, float)) and abs(tunnel["createdAt"] - time.time()) < 120

    listed = emu.aws("list-tunnels", "--thing-name", thing)["tunnelSummaries"]
    assert [t["tunnelId"] for t in listed] == [tunnel_id]
    assert listed[0]["status"] == "OPEN" and listed[0]["description"] == "a test tunnel"

    assert emu.aws("close-tunnel", "--tunnel-id", tunnel_id) == {}
    assert emu.aws("describe-tunnel", "--tunnel-id", tunnel_id)["tunnel"]["status"] == "CLOSED"
    # Closing again is harmless; deleting forgets the tunnel.
    emu.aws("close-tunnel", "--tunnel-id", tunnel_id)
    emu.aws("close-tunnel", "--tunnel-id", tunnel_id, "--delete")
    stderr = emu.aws("describe-tunnel", "--tunnel-id", tunnel_id, expect_error="ResourceNotFoundException")
    assert tunnel_id in stderr
    assert emu.aws("list-tunnels", "--thing-name", thing)["tunnelSummaries"] == []


def test_cli_error_shapes(emu):
    emu.aws("describe-tunnel", "--tunnel-id", "no-such-tunnel", expect_error="ResourceNotFoundException")
    emu.aws("close-tunnel", "--tunnel-id", "no-such-tunnel", expect_error="ResourceNotFoundException")
    emu.aws("rotate-tunnel-access-token", "--tunnel-id", "no-such-tunnel", "--client-mode", "ALL",
            expect_error="ResourceNotFoundException")
    # Constraints botocore does not check on the client side are the service's to refuse.
    emu.aws("open-tunnel", "--timeout-config", "maxLifetimeTimeoutMinutes=721", expect_error="ValidationException")
    emu.aws("open-tunnel", "--destination-config", "services=bad service", expect_error="ValidationException")
    emu.aws("open-tunnel", "--destination-config", "services=A,B,C,D", expect_error="LimitExceededException")
    emu.aws("list-tunnels", "--max-results", "101", expect_error="ValidationException")
    emu.aws("list-tunnels", "--next-token", "garbage", expect_error="ValidationException")
    # The same shapes without the CLI, plus what the CLI never sends.
    assert emu.api("DescribeTunnel", {"tunnelId": "x"})[1]["__type"] == "ResourceNotFoundException"
    assert emu.api("OpenTunnel", {"timeoutConfig": {"maxLifetimeTimeoutMinutes": 0}})[1]["__type"] == "ValidationException"
    assert emu.api("CloseTunnel", {"tunnelId": "x", "delete": 1})[1]["__type"] == "SerializationException"
    assert emu.api("NoSuchOperation")[1]["__type"] == "UnknownOperationException"


def test_cli_list_paging(emu):
    thing = f"pager-{uuid.uuid4().hex[:8]}"
    opened = [emu.aws("open-tunnel", "--destination-config", f"thingName={thing},services=SSH")["tunnelId"]
              for _ in range(5)]
    seen, token, pages = [], None, 0
    while True:
        args = ["--thing-name", thing, "--max-results", "2"] + (["--next-token", token] if token else [])
        page = emu.aws("list-tunnels", *args)
        pages += 1
        assert len(page["tunnelSummaries"]) <= 2
        seen += [t["tunnelId"] for t in page["tunnelSummaries"]]
        token = page.get("nextToken")
        if not token:
            break
        assert re.fullmatch(r"[a-zA-Z0-9_=-]{1,4096}", token)
    assert pages == 3
    assert seen == list(reversed(opened)), "newest first, every tunnel exactly once"


def test_cli_tags(emu):
    arn = emu.aws("open-tunnel")["tunnelArn"]
    emu.aws("tag-resource", "--resource-arn", arn, "--tags", "key=a,value=1", "key=b,value=2")
    assert emu.aws("list-tags-for-resource", "--resource-arn", arn)["tags"] == [
        {"key": "a", "value": "1"}, {"key": "b", "value": "2"}]
    emu.aws("tag-resource", "--resource-arn", arn, "--tags", "key=a,value=changed")
    emu.aws("untag-resource", "--resource-arn", arn, "--tag-keys", "b")
    assert emu.aws("list-tags-for-resource", "--resource-arn", arn)["tags"] == [{"key": "a", "value": "changed"}]
    missing = arn.rsplit("/", 1)[0] + "/00000000-0000-4000-8000-000000000000"
    emu.aws("list-tags-for-resource", "--resource-arn", missing, expect_error="ResourceNotFoundException")
    emu.aws("tag-resource", "--resource-arn", missing, "--tags", "key=a,value=1", expect_error="ResourceNotFoundException")


def test_cli_rotation_revokes_and_disconnects(emu):
    opened = emu.aws("open-tunnel", "--destination-config", "services=SSH")
    tunnel_id = opened["tunnelId"]

    async def connect_both():
        src = await emu.connect("source", opened["sourceAccessToken"])
        dst = await emu.connect("destination", opened["destinationAccessToken"])
        await recv_frame(src)
        await recv_frame(dst)
        return src, dst

    async def scenario():
        src, dst = await connect_both()
        states = emu.aws("describe-tunnel", "--tunnel-id", tunnel_id)["tunnel"]
        assert states["sourceConnectionState"]["status"] == "CONNECTED"
        assert states["destinationConnectionState"]["status"] == "CONNECTED"
        rotated = emu.aws("rotate-tunnel-access-token", "--tunnel-id", tunnel_id, "--client-mode", "SOURCE")
        assert set(rotated) == {"tunnelArn", "sourceAccessToken"}
        assert rotated["tunnelArn"] == opened["tunnelArn"]
        assert await expect_close(src) == (1008, "access token rotated")
        states = emu.aws("describe-tunnel", "--tunnel-id", tunnel_id)["tunnel"]
        assert states["sourceConnectionState"]["status"] == "DISCONNECTED"
        assert states["destinationConnectionState"]["status"] == "CONNECTED"
        status, body = await emu.refused("source", opened["sourceAccessToken"])
        assert status == 401 and "rotation" in body
        # The new token works; the destination was never touched.
        src = await emu.connect("source", rotated["sourceAccessToken"])
        await recv_frame(src)
        await sync(dst)
        both = emu.aws("rotate-tunnel-access-token", "--tunnel-id", tunnel_id, "--client-mode", "ALL",
                       "--destination-config", "services=SSH,VNC")
        assert set(both) == {"tunnelArn", "sourceAccessToken", "destinationAccessToken"}
        assert await expect_close(src) == (1008, "access token rotated")
        assert await expect_close(dst) == (1008, "access token rotated")
        assert emu.aws("describe-tunnel", "--tunnel-id", tunnel_id)["tunnel"]["destinationConfig"]["services"] == ["SSH", "VNC"]
        dst = await emu.connect("destination", both["destinationAccessToken"])
        ids = pb_ids(await recv_frame(dst))
        await dst.close()
        return ids

    assert run(scenario()) == b"\x08\x05\x32\x03SSH\x32\x03VNC"


def pb_ids(frame: bytes) -> bytes:
    bodies = split_messages(frame)
    assert len(bodies) == 1
    return bodies[0]


def test_cli_close_tunnel_disconnects_both_and_refuses_later(emu):
    opened = emu.aws("open-tunnel")
    tunnel_id = opened["tunnelId"]

    async def scenario():
        src = await emu.connect("source", opened["sourceAccessToken"], client_token=(ct := client_token()))
        dst = await emu.connect("destination", opened["destinationAccessToken"])
        await recv_frame(src)
        await recv_frame(dst)
        emu.aws("close-tunnel", "--tunnel-id", tunnel_id)
        closes = (await expect_close(src), await expect_close(dst))
        tunnel = emu.aws("describe-tunnel", "--tunnel-id", tunnel_id)["tunnel"]
        assert tunnel["status"] == "CLOSED"
        assert tunnel["sourceConnectionState"]["status"] == "DISCONNECTED"
        assert tunnel["destinationConnectionState"]["status"] == "DISCONNECTED"
        refused = await emu.refused("source", opened["sourceAccessToken"], client_token=ct)
        return closes, refused

    closes, (status, body) = run(scenario())
    assert closes == ((1000, "tunnel closed"), (1000, "tunnel closed"))
    assert status == 410 and "closed" in body


def test_cli_require_access_key_id(start_emulator):
    emu = start_emulator("--require-access-key-id", "AKIDGOOD")
    emu.aws("list-tunnels", expect_error="UnrecognizedClientException")
    assert "tunnelSummaries" in emu.aws("list-tunnels", access_key="AKIDGOOD")
    assert emu.api("ListTunnels", access_key="AKIDOTHER")[0] == 403


def test_lifetime_expiry_closes_and_refuses(start_emulator):
    # One "minute" of lifetime lasts 3 s here.
    emu = start_emulator("--minute-ms", "3000")
    tunnel = emu.open_tunnel(lifetime=1)

    async def scenario():
        src = await emu.connect("source", tunnel["sourceAccessToken"], client_token=(ct := client_token()))
        await recv_frame(src)
        closed = await expect_close(src, timeout=30)
        refused = await emu.refused("source", tunnel["sourceAccessToken"], client_token=ct)
        return closed, refused

    closed, (status, body) = run(scenario())
    assert closed == (1000, "tunnel expired")
    assert status == 410 and "expired" in body
    assert emu.describe(tunnel["tunnelId"])["status"] == "CLOSED"


def test_state_file_keeps_tunnels_and_token_use_across_restarts(start_emulator, tmp_path):
    state_file = tmp_path / "state.json"
    first = start_emulator("--state-file", str(state_file))
    tunnel = first.open_tunnel(services=["SSH"])
    ct = client_token()

    async def use_source(emu):
        ws = await emu.connect("source", tunnel["sourceAccessToken"], client_token=ct)
        await recv_frame(ws)
        await ws.close()

    run(use_source(first))
    assert state_file.stat().st_mode & 0o077 == 0, "the state file holds tokens and must be private"
    assert first.stop() == 0

    second = start_emulator("--state-file", str(state_file))
    assert second.describe(tunnel["tunnelId"])["status"] == "OPEN"

    async def scenario():
        # The source token keeps its client-token binding; the destination token is unused.
        status, body = await second.refused("source", tunnel["sourceAccessToken"])
        await use_source(second)
        dst = await second.connect("destination", tunnel["destinationAccessToken"])
        await recv_frame(dst)
        await dst.close()
        return status, body

    assert run(scenario()) == (400, MISMATCH)


# ==============================================================================================
# Data plane admission
# ==============================================================================================


def test_admission_status_codes(emu):
    tunnel = emu.open_tunnel(services=["SSH"])
    src, dst = tunnel["sourceAccessToken"], tunnel["destinationAccessToken"]
    other = emu.open_tunnel()

    async def scenario():
        results = {
            "path": await emu.refused("source", src, path="/other"),
            "no mode": await emu.refused(None, src),
            "bad mode": await emu.refused("sideways", src),
            "mode mismatch": await emu.refused("destination", src),
            "no token": await emu.refused("source", None),
            "two tokens": await emu.refused("source", src, headers=[("access-token", other["sourceAccessToken"])]),
            "token and cookie": await emu.refused("source", src, headers=[("Cookie", f"awsiot-tunnel-token={src}")]),
            "bad client token": await emu.refused("source", src, client_token="too-short"),
            "two client tokens": await emu.refused("source", src, client_token=client_token(),
                                                   headers=[("client-token", client_token())]),
            "unknown token": await emu.refused("source", "A" * 1024),
            "no subprotocol": await emu.refused("source", src, subprotocols=("chat",)),
        }
        # None of these consumed the token.
        ws = await emu.connect("destination", dst, cookie=True, subprotocols=(V1, V3, V2))
        subprotocol, channel = ws.subprotocol, ws.response.headers["channel-id"]
        await ws.close()
        return results, subprotocol, channel

    results, subprotocol, channel = run(scenario())
    for name, (status, body) in results.items():
        expected = 401 if name == "unknown token" else 400
        assert status == expected, f"{name}: {status} {body}"
        assert body.strip(), f"{name}: empty body"
    assert "local-proxy-mode" in results["mode mismatch"][1]
    assert "/tunnel" in results["path"][1]
    assert subprotocol == V3, "the 101 must carry the highest version offered"
    assert CHANNEL_ID.fullmatch(channel)


def test_admission_request_over_4096_bytes_is_431(emu):
    tunnel = emu.open_tunnel()
    raw = RawClient(emu)
    status, headers, body = raw.upgrade("source", tunnel["sourceAccessToken"], extra=f"X-Padding: {'p' * 3000}\r\n")
    raw.close()
    assert status == 431 and b"4096" in body
    assert CHANNEL_ID.fullmatch(headers["channel-id"])
    # Just under the limit is fine.
    raw = RawClient(emu)
    status, headers, _ = raw.upgrade("source", tunnel["sourceAccessToken"], extra=f"X-Padding: {'p' * 2400}\r\n")
    raw.close()
    assert status == 101 and headers["sec-websocket-protocol"] == V3


def test_single_use_without_client_token(emu):
    tunnel = emu.open_tunnel()

    async def scenario():
        ws = await emu.connect("source", tunnel["sourceAccessToken"])
        await recv_frame(ws)
        again_while_open = await emu.refused("source", tunnel["sourceAccessToken"])
        await ws.close()
        again = await emu.refused("source", tunnel["sourceAccessToken"])
        with_token_now = await emu.refused("source", tunnel["sourceAccessToken"], client_token=client_token())
        return again_while_open, again, with_token_now

    for status, body in run(scenario()):
        assert (status, body.strip()) == (400, USED)


def test_single_use_with_client_token_replaces_connection(emu, pb):
    tunnel = emu.open_tunnel(services=["SSH"])
    ct = client_token()

    async def scenario():
        first = await emu.connect("destination", tunnel["destinationAccessToken"], client_token=ct)
        await recv_frame(first)
        second = await emu.connect("destination", tunnel["destinationAccessToken"], client_token=ct)
        replaced = await expect_close(first)
        await recv_frame(second)
        mismatch = await emu.refused("destination", tunnel["destinationAccessToken"], client_token=client_token())
        missing = await emu.refused("destination", tunnel["destinationAccessToken"])
        state = emu.describe(tunnel["tunnelId"])["destinationConnectionState"]["status"]
        await second.close()
        return replaced, mismatch, missing, state

    replaced, mismatch, missing, state = run(scenario())
    assert replaced == (1000, "replaced by a newer connection")
    assert mismatch == (400, MISMATCH) and missing == (400, MISMATCH)
    assert state == "CONNECTED"


# ==============================================================================================
# SERVICE_IDS and forwarding
# ==============================================================================================


def test_service_ids_on_connect(emu, pb):
    with_services = emu.open_tunnel(services=["SSH", "HTTP", "a:b_c-d"])
    without = emu.open_tunnel()

    async def scenario():
        v3 = await emu.connect("destination", with_services["destinationAccessToken"], subprotocols=(V3,))
        v2 = await emu.connect("source", with_services["sourceAccessToken"], subprotocols=(V2,))
        first_v3, first_v2 = await recv_frame(v3), await recv_frame(v2)
        empty = await emu.connect("source", without["sourceAccessToken"], subprotocols=(V3,))
        first_empty = await recv_frame(empty)
        # A 1.0 client gets no SERVICE_IDS: the first thing it sees is relayed data.
        v1 = await emu.connect("destination", without["destinationAccessToken"], subprotocols=(V1,))
        assert v1.subprotocol == V1
        marker = frame_message(message(pb, pb.Message.STREAM_START, stream=7))
        await empty.send(marker)
        first_v1 = await recv_frame(v1)
        for ws in (v3, v2, empty, v1):
            await ws.close()
        return first_v3, first_v2, first_empty, first_v1, marker

    first_v3, first_v2, first_empty, first_v1, marker = run(scenario())
    expected = frame_message(message(pb, pb.Message.SERVICE_IDS, ids=["SSH", "HTTP", "a:b_c-d"]))
    assert first_v3 == expected and first_v2 == expected
    assert first_empty == bytes.fromhex("0002 0805")
    assert first_v1 == marker


def data_batch(pb, count: int, seed: int) -> list[bytes]:
    """STREAM_START then DATA messages of many sizes (1 byte to the 64,512-byte maximum)."""
    rng = random.Random(seed)
    sizes = [1, 2, 100, 4096, 64_000, 64_512] + [rng.randint(1, 64_512) for _ in range(count)]
    out = [message(pb, pb.Message.STREAM_START, stream=1, service="SSH", conn=1)]
    for size in sizes:
        out.append(message(pb, pb.Message.DATA, stream=1, service="SSH", conn=1, payload=rng.randbytes(size)))
    return out


@pytest.mark.parametrize("framing", ["passthrough", "coalesce", "split"])
def test_forwarding_is_intact_under_every_framing(start_emulator, pb, framing):
    emu = start_emulator("--framing", framing, "--seed", "7")
    tunnel = emu.open_tunnel(services=["SSH"])
    batch = data_batch(pb, 40, seed=3)
    # The source sends in two shapes: several messages per frame, and messages cut across frames.
    stream = b"".join(frame_message(m) for m in batch)
    sent_frames = [b"".join(frame_message(m) for m in batch[:3])]
    pos = len(sent_frames[0])
    rng = random.Random(11)
    while pos < len(stream):
        step = rng.randint(1, 100_000)
        sent_frames.append(stream[pos:pos + step])
        pos += step

    async def scenario():
        src = await emu.connect("source", tunnel["sourceAccessToken"])
        dst = await emu.connect("destination", tunnel["destinationAccessToken"])
        # Under `split` even SERVICE_IDS may come in pieces: read messages, not frames.
        src_in, dst_in = MessageReader(src), MessageReader(dst)
        service_ids = (await src_in.read(1), await dst_in.read(1))
        dst_in.frames.clear()
        src_in.frames.clear()

        async def send():
            for f in sent_frames:
                await src.send(f)

        sender = asyncio.create_task(send())
        received = await dst_in.read(len(batch))
        await sender
        # And back: the destination answers with one message per frame.
        reply = [message(pb, pb.Message.DATA, stream=1, service="SSH", conn=1, payload=bytes([i]) * (i * 997 + 1))
                 for i in range(20)]
        for m in reply:
            await dst.send(frame_message(m))
        back = await src_in.read(len(reply))
        assert src_in.buffer == dst_in.buffer == b""
        await src.close()
        await dst.close()
        assert service_ids[0] == service_ids[1] == [message(pb, pb.Message.SERVICE_IDS, ids=["SSH"])]
        return received, dst_in.frames, reply, back, src_in.frames

    received, frames, reply, back, back_frames = run(scenario())
    assert received == batch, "messages must arrive intact and in order"
    assert back == reply
    assert max(frames) <= MAX_FRAME
    first_three = sum(len(frame_message(m)) for m in batch[:3])
    if framing == "passthrough":
        # The first frame carried three whole messages and goes out as one.
        assert frames[0] == first_three
        assert back_frames == [len(frame_message(m)) for m in reply]
    elif framing == "coalesce":
        # At least what arrived in one read shares a frame (full frames: see the back-pressure test).
        assert frames[0] >= first_three
    else:
        assert len(frames) > len(sent_frames) and min(frames) < 64, "split must cut at small and odd sizes"


def test_backpressure_bounds_memory_and_loses_nothing(start_emulator, pb):
    emu = start_emulator("--framing", "coalesce")
    tunnel = emu.open_tunnel(services=["SSH"])
    payload = os.urandom(64_000)
    total_messages = 1000  # 64 MB offered, far more than the kernel buffers between the peers

    async def scenario():
        src = await emu.connect("source", tunnel["sourceAccessToken"])
        dst = await emu.connect("destination", tunnel["destinationAccessToken"])
        await recv_frame(src)
        await recv_frame(dst)
        baseline = emu.rss_kib()
        sent = 0
        start = message(pb, pb.Message.STREAM_START, stream=1, service="SSH", conn=1)
        data = frame_message(message(pb, pb.Message.DATA, stream=1, service="SSH", conn=1, payload=payload))

        async def send():
            nonlocal sent
            await src.send(frame_message(start))
            for _ in range(total_messages):
                await src.send(data)
                sent += 1

        sender = asyncio.create_task(send())
        # The destination reads nothing until the sender is stuck: progress stops once every
        # buffer on the way is full, which is the emulator refusing to read the source.
        last, still = -1, 0
        while still < 10 and not sender.done():
            await asyncio.sleep(0.1)
            still = still + 1 if sent == last else 0
            last = sent
        assert not sender.done(), "the whole transfer fit in buffers: make it larger"
        peak = emu.rss_kib()
        digest, count = hashlib.sha256(), 0
        buffered = b""
        frames = []
        while count < total_messages + 1:
            frame = await recv_frame(dst)
            frames.append(len(frame))
            buffered += frame
            while len(buffered) >= 2 and len(buffered) >= 2 + int.from_bytes(buffered[:2], "big"):
                n = int.from_bytes(buffered[:2], "big")
                body, buffered = buffered[2:2 + n], buffered[2 + n:]
                m = pb.Message()
                m.ParseFromString(body)
                if m.type == pb.Message.DATA:
                    digest.update(m.payload)
                count += 1
        await sender
        await src.close()
        await dst.close()
        return baseline, peak, digest.hexdigest(), frames

    baseline, peak, received, frames = run(scenario(), timeout=300)
    assert received == hashlib.sha256(payload * total_messages).hexdigest()
    # The backlog was re-aggregated into frames of the maximum size, cutting through messages.
    assert max(frames) == MAX_FRAME
    # Without back-pressure the emulator would have held tens of megabytes; its buffers are
    # about a megabyte per connection.
    assert peak - baseline < 24 * 1024, f"RSS grew by {peak - baseline} KiB while the destination did not read"


def test_messages_for_an_absent_peer_are_dropped(emu, pb):
    tunnel = emu.open_tunnel(services=["SSH"])

    async def scenario():
        src = await emu.connect("source", tunnel["sourceAccessToken"])
        await recv_frame(src)
        await src.send(frame_message(message(pb, pb.Message.STREAM_START, stream=1, service="SSH")))
        await sync(src)
        dst = await emu.connect("destination", tunnel["destinationAccessToken"])
        service_ids = await recv_frame(dst)
        marker = frame_message(message(pb, pb.Message.STREAM_START, stream=2, service="SSH"))
        await src.send(marker)
        first = await recv_frame(dst)
        await src.close()
        await dst.close()
        return service_ids, first, marker

    service_ids, first, marker = run(scenario())
    assert split_messages(service_ids)[0][:2] == b"\x08\x05"
    assert first == marker


def test_ping_is_answered_with_the_same_payload(emu):
    tunnel = emu.open_tunnel()

    async def scenario():
        ws = await emu.connect("source", tunnel["sourceAccessToken"])
        await recv_frame(ws)
        latency = await asyncio.wait_for(await ws.ping(b"\x00payload\xff"), WAIT)
        await ws.close()
        return latency

    assert run(scenario()) >= 0
    raw = RawClient(emu)
    tunnel = emu.open_tunnel()
    assert raw.upgrade("source", tunnel["sourceAccessToken"])[0] == 101
    assert raw.read_frame()[0] == 0x2  # SERVICE_IDS
    raw.send_frame(0x9, b"exact bytes")
    assert raw.read_frame() == (0xA, b"exact bytes")
    raw.close()


# ==============================================================================================
# Peer reconnects
# ==============================================================================================


@pytest.mark.parametrize("policy", ["stream-reset", "session-reset", "none"])
def test_reconnect_policy(start_emulator, pb, policy):
    emu = start_emulator("--on-reconnect", policy)
    tunnel = emu.open_tunnel(services=["SSH", "HTTP"])
    ct = client_token()

    async def scenario():
        src = await emu.connect("source", tunnel["sourceAccessToken"])
        dst = await emu.connect("destination", tunnel["destinationAccessToken"], client_token=ct)
        await recv_frame(src)
        await recv_frame(dst)
        await src.send(frame_message(message(pb, pb.Message.STREAM_START, stream=4, service="SSH", conn=1))
                       + frame_message(message(pb, pb.Message.STREAM_START, stream=9, service="HTTP", conn=1)))
        await recv_messages(dst, 2)
        # The destination comes back (same token, same client token): the old one is replaced.
        dst2 = await emu.connect("destination", tunnel["destinationAccessToken"], client_token=ct)
        await recv_frame(dst2)
        await expect_close(dst)
        # Whatever the service tells the source arrives before the answer to a new stream.
        await src.send(frame_message(message(pb, pb.Message.STREAM_START, stream=5, service="SSH", conn=1)))
        await recv_messages(dst2, 1)
        answer = frame_message(message(pb, pb.Message.DATA, stream=5, service="SSH", conn=1, payload=b"pong"))
        await dst2.send(answer)
        seen = []
        while True:
            frame = await recv_frame(src)
            if frame == answer:
                break
            seen += split_messages(frame)
        await src.close()
        await dst2.close()
        return seen

    seen = run(scenario())
    if policy == "stream-reset":
        assert seen == [message(pb, pb.Message.STREAM_RESET, stream=4, service="SSH"),
                        message(pb, pb.Message.STREAM_RESET, stream=9, service="HTTP")]
    elif policy == "session-reset":
        assert seen == [message(pb, pb.Message.SESSION_RESET)]
    else:
        assert seen == []


# ==============================================================================================
# Validation rules: each one closes the sender with its code
# ==============================================================================================

VIOLATIONS = [
    # (name, sender side, messages sent first, offending message builder, code, reason fragment)
    ("unknown field", "source", [], lambda pb: message(pb, pb.Message.DATA, stream=1) + b"\x40\x01", 1008, "unknown protobuf field 8"),
    ("type 0", "source", [], lambda pb: message(pb, 0, stream=1), 1008, "type 0"),
    ("streamId 0", "source", [], lambda pb: message(pb, pb.Message.STREAM_START, service="SSH"), 1008, "streamId 0"),
    ("STREAM_START from destination", "destination", [], lambda pb: message(pb, pb.Message.STREAM_START, stream=1), 1008, "STREAM_START from a destination"),
    ("CONNECTION_START from destination", "destination", [], lambda pb: message(pb, pb.Message.CONNECTION_START, stream=1, conn=2), 1008, "CONNECTION_START from a destination"),
    ("SESSION_RESET from a client", "source", [], lambda pb: message(pb, pb.Message.SESSION_RESET), 1008, "SESSION_RESET is sent only by the service"),
    ("SERVICE_IDS from a client", "destination", [], lambda pb: message(pb, pb.Message.SERVICE_IDS, ids=["SSH"]), 1008, "SERVICE_IDS is sent only by the service"),
    ("unknown service", "source", [], lambda pb: message(pb, pb.Message.STREAM_START, stream=1, service="FTP"), 1008, "not in the tunnel"),
    ("DATA without STREAM_START", "source", [], lambda pb: message(pb, pb.Message.DATA, stream=1, service="SSH", payload=b"x"), 1008, "had no STREAM_START"),
    ("STREAM_RESET without STREAM_START", "destination", [], lambda pb: message(pb, pb.Message.STREAM_RESET, stream=1, service="SSH"), 1008, "had no STREAM_START"),
    ("serviceId after none", "source", ["v1start"], lambda pb: message(pb, pb.Message.DATA, stream=1, service="SSH", payload=b"x"), 1008, "after messages without one"),
    ("malformed protobuf", "source", [], lambda pb: b"\x08\x01\x22\x05ab", 1007, "malformed"),
    ("payload over 64512", "source", ["start"], lambda pb: message(pb, pb.Message.DATA, stream=1, service="SSH", payload=b"x" * 64_513), 1009, "64512"),
    ("unknown type, not ignorable", "source", [], lambda pb: message(pb, 9, stream=1), 1008, "unknown message type 9"),
]


@pytest.mark.parametrize("case", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_validation_rule_closes_with_code(emu, pb, case):
    name, side, before, offending, code, reason = case
    tunnel = emu.open_tunnel(services=["SSH"])

    async def scenario():
        src = await emu.connect("source", tunnel["sourceAccessToken"])
        dst = await emu.connect("destination", tunnel["destinationAccessToken"])
        await recv_frame(src)
        await recv_frame(dst)
        for item in before:
            start = message(pb, pb.Message.STREAM_START, stream=1, service="" if item == "v1start" else "SSH")
            await src.send(frame_message(start))
            await recv_messages(dst, 1)
        sender, other = (src, dst) if side == "source" else (dst, src)
        await sender.send(frame_message(offending(pb)))
        closed = await expect_close(sender)
        # The other side stays connected and usable.
        await sync(other)
        state = emu.describe(tunnel["tunnelId"])
        await other.close()
        return closed, state

    (got_code, got_reason), state = run(scenario())
    assert got_code == code and reason in got_reason, f"{name}: {got_code} {got_reason!r}"
    assert state[f"{side}ConnectionState"]["status"] == "DISCONNECTED"


def test_unknown_type_marked_ignorable_is_relayed(emu, pb):
    tunnel = emu.open_tunnel()

    async def scenario():
        src = await emu.connect("source", tunnel["sourceAccessToken"])
        dst = await emu.connect("destination", tunnel["destinationAccessToken"])
        await recv_frame(src)
        await recv_frame(dst)
        future = frame_message(message(pb, 12, stream=1, ignorable=True))
        await src.send(future)
        got = await recv_frame(dst)
        await src.close()
        await dst.close()
        return got, future

    got, future = run(scenario())
    assert got == future


def test_websocket_level_violations(emu):
    def upgraded():
        tunnel = emu.open_tunnel()
        raw = RawClient(emu)
        assert raw.upgrade("source", tunnel["sourceAccessToken"])[0] == 101
        assert raw.read_frame()[0] == 0x2
        return raw

    cases = [
        ("text frame", lambda raw: raw.send_frame(0x1, b"hello"), 1003),
        ("oversized frame", lambda raw: raw.send_frame(0x2, b"\x00" * (MAX_FRAME + 1)), 1009),
        ("unmasked frame", lambda raw: raw.send_frame(0x2, b"\x00\x02\x08\x01", mask=False), 1002),
        ("reserved opcode", lambda raw: raw.send_frame(0x3, b""), 1002),
        ("continuation without message", lambda raw: raw.send_frame(0x0, b"x"), 1002),
    ]
    for name, act, code in cases:
        raw = upgraded()
        act(raw)
        got, reason = raw.read_close()
        raw.close()
        assert got == code and reason, f"{name}: {got} {reason!r}"
    # A text frame from a real client library, too.

    async def text():
        tunnel = emu.open_tunnel()
        ws = await emu.connect("source", tunnel["sourceAccessToken"])
        await recv_frame(ws)
        await ws.send("text is not allowed")
        return await expect_close(ws)

    assert run(text()) == (1003, "text frames are not accepted")


def test_random_input_after_the_upgrade_never_hurts_the_emulator(emu, pb):
    """Seeded random frames and raw bytes after a successful upgrade: each connection either
    stays open or is closed with a WebSocket close code, and the emulator keeps serving."""
    rng = random.Random(20240601)
    codes = set()
    for round_ in range(24):
        tunnel = emu.open_tunnel(services=["SSH"])
        raw = RawClient(emu)
        assert raw.upgrade("source" if round_ % 2 else "destination",
                           tunnel["sourceAccessToken" if round_ % 2 else "destinationAccessToken"])[0] == 101
        assert raw.read_frame()[0] == 0x2
        if round_ % 3 == 0:
            raw.send(rng.randbytes(rng.randint(1, 4000)))
        else:
            for _ in range(rng.randint(1, 6)):
                body = rng.randbytes(rng.randint(0, 300))
                # Sometimes a well-framed tunnel message of random protobuf, sometimes anything.
                payload = frame_message(body) if rng.random() < 0.6 else body
                raw.send_frame(rng.choice([0x2, 0x2, 0x2, 0x0, 0x9]), payload[:125] if rng.random() < 0.2 else payload,
                               fin=rng.random() < 0.9)
        raw.send_frame(0x8, (1000).to_bytes(2, "big"))
        got, _ = raw.read_close()
        raw.close()
        codes.add(got)
    assert codes <= {1000, 1002, 1003, 1007, 1008, 1009}, codes
    assert codes - {1000}, "random input should have broken some rule"
    assert emu.alive()
    status, _ = emu.api("ListTunnels")
    assert status == 200
