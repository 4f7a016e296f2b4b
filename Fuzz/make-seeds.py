#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs (Fuzz/README.md) into DIRECTORY/TARGET/NAME.

Usage: make-seeds.py DIRECTORY

Every seed is built here from the protocol's rules, the same cases Tests/ checks byte by byte
(RFC 6455's examples, the tunnel's messages, the service's handshake, DNS answers with
compression, the files and requests the parsers read), so that nothing opaque is committed. The
directory of each target is emptied first, so a seed removed here disappears there too.
"""
import os
import shutil
import struct
import sys

SEEDS = {}


def seed(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    SEEDS.setdefault(target, {})[name] = bytes(data)


# --- WebSocket frames (RFC 6455 §5) -------------------------------------------------------------

RFC_KEY = bytes([0x37, 0xFA, 0x21, 0x3D])


def mask(payload, key):
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def frame(opcode, payload=b"", fin=True, key=None, length_form=None):
    """One frame; `length_form` forces the 16-bit (126) or 64-bit (127) length encoding."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    mask_bit = 0x80 if key else 0
    if length_form == 127 or (length_form is None and n > 0xFFFF):
        header = bytes([first, mask_bit | 127]) + struct.pack(">Q", n)
    elif length_form == 126 or (length_form is None and n > 125):
        header = bytes([first, mask_bit | 126]) + struct.pack(">H", n)
    else:
        header = bytes([first, mask_bit | n])
    if key:
        return header + key + mask(payload, key)
    return header + payload


def close_payload(code, reason=b""):
    return struct.pack(">H", code) + reason


def websocket_seeds():
    t = "websocket-frame"
    seed(t, "binary-hello", frame(0x2, b"Hello"))
    seed(t, "binary-hello-masked", frame(0x2, b"Hello", key=RFC_KEY))
    seed(t, "fragmented", frame(0x2, b"Hel", fin=False) + frame(0x0, b"lo"))
    seed(t, "fragmented-masked", frame(0x2, b"Hel", fin=False, key=RFC_KEY) + frame(0x0, b"lo", key=RFC_KEY))
    seed(t, "ping-in-fragmented", frame(0x2, b"ab", fin=False) + frame(0x9, b"p") + frame(0x0, b"cd"))
    seed(t, "ping-pong-masked", frame(0x9, b"Hello", key=RFC_KEY) + frame(0xA, b"Hello", key=RFC_KEY))
    seed(t, "length-126", frame(0x2, bytes(range(256)) * 1))
    seed(t, "length-127-short", frame(0x2, bytes(300), length_form=127))
    seed(t, "length-127-masked", frame(0x2, bytes(range(200)), key=RFC_KEY, length_form=127))
    seed(t, "empty-frames", frame(0x2, b"", fin=False) + frame(0x0, b"", fin=False) + frame(0x0, b""))
    seed(t, "close-normal", frame(0x8, close_payload(1000, b"bye!")))
    seed(t, "close-empty", frame(0x8))
    seed(t, "close-masked-utf8", frame(0x8, close_payload(1001, "é".encode()), key=RFC_KEY))
    seed(t, "close-then-data", frame(0x8, close_payload(1000)) + frame(0x2, b"after"))
    seed(t, "close-bad-code", frame(0x8, close_payload(1005)))
    seed(t, "reserved-bits", bytes([0xC2, 0x00]))
    seed(t, "text-frame", frame(0x1, b"text"))
    seed(t, "too-long-control", bytes([0x89, 0x7E, 0x00, 0x7E]) + bytes(126))
    seed(t, "huge-length", bytes([0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]))
    # A tunnel message (a DATA message, tunnel-message's format) inside a binary frame.
    seed(t, "tunnel-data", frame(0x2, framed(message(type_=1, stream_id=1, payload=b"ssh", connection_id=1))))
    interleaved = b""
    for opcode, payload, fin in [(0x2, b"\x01\x02\x03", False), (0x9, b"p1", True), (0x0, b"", False),
                                 (0x0, b"\x04\x05", True), (0x2, b"", True), (0xA, b"", True),
                                 (0x2, b"\xaa\xbb\xcc\xdd\xee", True), (0x8, close_payload(1000, b"bye!"), True)]:
        interleaved += frame(opcode, payload, fin=fin, key=RFC_KEY)
    seed(t, "interleaved-masked", interleaved)


# --- Tunnel messages (2-byte prefix + protobuf, Sources/TunnelCore/TunnelMessage.swift) ----------

def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def key(field, wire_type):
    return varint(field << 3 | wire_type)


def message(type_=0, stream_id=0, ignorable=False, payload=b"", service_id=b"", available=(), connection_id=0):
    out = b""
    if type_:
        out += key(1, 0) + varint(type_)
    if stream_id:
        out += key(2, 0) + varint(stream_id)
    if ignorable:
        out += key(3, 0) + varint(1)
    if payload:
        out += key(4, 2) + varint(len(payload)) + payload
    if service_id:
        out += key(5, 2) + varint(len(service_id)) + service_id
    for s in available:
        out += key(6, 2) + varint(len(s)) + s
    if connection_id:
        out += key(7, 0) + varint(connection_id)
    return out


def framed(body):
    return struct.pack(">H", len(body)) + body


def tunnel_seeds():
    t = "tunnel-message"
    seed(t, "stream-start-v3", framed(message(type_=2, stream_id=1, service_id=b"SSH", connection_id=1)))
    seed(t, "data", framed(message(type_=1, stream_id=1, payload=b"hello", connection_id=1)))
    seed(t, "stream-reset", framed(message(type_=3, stream_id=7)))
    seed(t, "session-reset", framed(message(type_=4)))
    seed(t, "service-ids", framed(message(type_=5, available=[b"SSH", b"HTTP", b"RDP"])))
    seed(t, "connection-start-reset", framed(message(type_=6, stream_id=1, service_id=b"SSH", connection_id=2))
         + framed(message(type_=7, stream_id=1, service_id=b"SSH", connection_id=2)))
    seed(t, "ignorable-unknown-type", framed(message(type_=42, ignorable=True)))
    seed(t, "negative-stream-id", framed(message(type_=1, stream_id=-1, payload=b"x")))
    unknown = (message(type_=1) + key(15, 0) + varint(300) + key(16, 1) + bytes(8) + key(17, 5) + bytes(4)
               + key(18, 2) + varint(3) + b"abc" + key(19, 3) + key(20, 0) + varint(1) + key(19, 4))
    seed(t, "unknown-fields", framed(unknown))
    seed(t, "wrong-wire-type", framed(key(1, 2) + varint(1) + b"\x01" + key(4, 0) + varint(5)))
    seed(t, "repeated-fields", framed(message(type_=1, stream_id=1) + key(2, 0) + varint(2) + key(4, 2) + varint(1) + b"a"
                                      + key(4, 2) + varint(2) + b"bc"))
    seed(t, "several", framed(message(type_=5, available=[b"SSH"])) + framed(message(type_=2, stream_id=1, service_id=b"SSH"))
         + framed(message(type_=1, stream_id=1, payload=bytes(range(200)))) + framed(b""))
    seed(t, "partial", framed(message(type_=1, stream_id=1, payload=b"cut short"))[:9])
    seed(t, "bad-utf8-service-id", framed(key(5, 2) + varint(2) + b"\xc3\x28"))
    seed(t, "varint-too-long", framed(key(1, 0) + b"\xff" * 10 + b"\x01"))


# --- MQTT 3.1.1 packets from a broker (Sources/TunnelCore/MQTTPacket.swift) --------------------


def mqtt_length(n):
    """The remaining length in MQTT's variable-length form (§2.2.3), shortest form."""
    out = b""
    while True:
        digit, n = n & 0x7F, n >> 7
        out += bytes([digit | (0x80 if n else 0)])
        if not n:
            return out


def mqtt_text(s):
    data = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(data)) + data


def mqtt_packet(first, body=b""):
    return bytes([first]) + mqtt_length(len(body)) + body


NOTIFY_TOPIC = "$aws/things/gw1/tunnels/notify"
NOTIFICATION = ('{"clientAccessToken":"AQGAAXiToken","clientMode":"destination","region":"us-east-1",'
                '"services":["SSH"]}')


def mqtt_seeds():
    t = "mqtt-packet"
    connack = mqtt_packet(0x20, b"\x00\x00")
    suback = mqtt_packet(0x90, b"\x00\x01\x01")
    notify_qos1 = mqtt_packet(0x32, mqtt_text(NOTIFY_TOPIC) + b"\x00\x0a" + NOTIFICATION.encode())
    seed(t, "session", connack + suback + notify_qos1 + mqtt_packet(0xD0))
    seed(t, "session-dup", connack + suback + mqtt_packet(0x3A, mqtt_text(NOTIFY_TOPIC) + b"\x00\x0a{}") + notify_qos1)
    seed(t, "session-present", mqtt_packet(0x20, b"\x01\x00") + mqtt_packet(0x32, mqtt_text(NOTIFY_TOPIC) + b"\x00\x01{}") + suback)
    seed(t, "refused", mqtt_packet(0x20, b"\x00\x05"))
    seed(t, "subscription-refused", connack + mqtt_packet(0x90, b"\x00\x01\x80"))
    seed(t, "qos0-retained", connack + suback + mqtt_packet(0x31, mqtt_text("a/b") + b"hi"))
    seed(t, "puback-unsuback", connack + suback + mqtt_packet(0x40, b"\x00\x02") + mqtt_packet(0xB0, b"\x00\x02"))
    seed(t, "connect", mqtt_packet(0x10, mqtt_text("MQTT") + b"\x04\x02\x00\x3c" + mqtt_text("gw1")))
    seed(t, "connect-credentials", mqtt_packet(0x10, mqtt_text("MQTT") + b"\x04\xc0\x00\x00" + mqtt_text("dev")
                                               + mqtt_text("user") + mqtt_text(b"pw")))
    seed(t, "subscribe-unsubscribe", mqtt_packet(0x82, b"\x00\x01" + mqtt_text(NOTIFY_TOPIC) + b"\x01" + mqtt_text("a/#") + b"\x00")
         + mqtt_packet(0xA2, b"\x00\x02" + mqtt_text("+/b")))
    seed(t, "ping-disconnect", mqtt_packet(0xC0) + mqtt_packet(0xD0) + mqtt_packet(0xE0))
    seed(t, "length-128", connack + mqtt_packet(0x30, mqtt_text("t") + bytes(125)))
    seed(t, "length-16384", mqtt_packet(0x30, mqtt_text("t") + bytes(range(256)) * 63 + bytes(16381 - 256 * 63)))
    seed(t, "length-five-bytes", b"\x30\xff\xff\xff\xff\x01")
    seed(t, "length-non-minimal", b"\xd0\x80\x00")
    seed(t, "length-largest", b"\x30\xff\xff\xff\x7f")
    seed(t, "pubrel", connack + mqtt_packet(0x62, b"\x00\x01"))
    seed(t, "publish-qos2", mqtt_packet(0x34, mqtt_text("t") + b"\x00\x01"))
    seed(t, "topic-wildcard", mqtt_packet(0x30, mqtt_text("a/+")))
    seed(t, "topic-bad-utf8", mqtt_packet(0x30, mqtt_text(b"\xed\xa0\x80")))
    seed(t, "trailing", mqtt_packet(0x10, mqtt_text("MQTT") + b"\x04\x02\x00\x3c" + mqtt_text("gw1") + b"\xff"))


# --- The upgrade response the proxy reads (docs/PROTOCOL.md §3) ---------------------------------

# Sec-WebSocket-Accept for the key base64("the sample nonce") (RFC 6455 §1.3), which
# Fuzz/Targets/upgrade-response.swift sends.
SAMPLE_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
CHANNEL_ID = "0ea2b3fffe6adc0e-0000125a-00005adb-c2f218c35b921565-17c807e1"


def upgrade_response_seeds():
    t = "upgrade-response"
    switching = ("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
                 f"sec-websocket-accept: {SAMPLE_ACCEPT}\r\nsec-websocket-protocol: aws.iot.securetunneling-3.0\r\n"
                 f"channel-id: {CHANNEL_ID}\r\n\r\n")
    seed(t, "switching", switching)
    seed(t, "switching-then-frames", switching.encode() + frame(0x2, framed(message(type_=5, available=[b"SSH"]))))
    seed(t, "switching-mixed-case", "HTTP/1.1 101 Switching Protocols\r\nUPGRADE: WebSocket\r\n"
         f"CONNECTION: keep-alive, UPGRADE\r\nSEC-WEBSOCKET-ACCEPT: {SAMPLE_ACCEPT}\r\n"
         "Sec-Websocket-Protocol:aws.iot.securetunneling-2.0 \r\n\r\n")
    seed(t, "switching-extensions", f"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         f"Sec-WebSocket-Accept: {SAMPLE_ACCEPT}\r\nSec-WebSocket-Protocol: aws.iot.securetunneling-1.0\r\n"
         "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
    seed(t, "switching-wrong-accept", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n")
    body = "Invalid access token: The access token is not valid."
    seed(t, "401-content-length", f"HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\n"
         f"Content-Length: {len(body)}\r\nchannel-id: {CHANNEL_ID}\r\n\r\n{body}")
    seed(t, "400-chunked", "HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n"
         "1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n5\r\nhello\r\n0\r\nTrailer: x\r\n\r\n")
    seed(t, "500-until-close", "HTTP/1.0 500 Internal Server Error\r\n\r\nsomething broke")
    seed(t, "bad-status-line", "HTTP/1.1 1o1 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    seed(t, "bare-lf", "HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\n\n")
    seed(t, "folded-header", "HTTP/1.1 403 Forbidden\r\nX-A: 1\r\n  folded\r\n\r\n")


# --- DNS responses (RFC 1035 §4) -----------------------------------------------------------------

def dns_name(text):
    out = b""
    for label in text.split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def dns_header(id_=0x1234, flags=0x8180, qd=1, an=0, ns=0, ar=0):
    return struct.pack(">HHHHHH", id_, flags, qd, an, ns, ar)


def rr(owner, rtype, rdata, rclass=1, ttl=3600):
    return owner + struct.pack(">HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def dns_seeds():
    t = "dns-message"
    q = dns_name("www.example.com")
    pointer = b"\xc0\x0c"
    seed(t, "a-two-answers", dns_header(an=2) + q + b"\x00\x01\x00\x01"
         + rr(pointer, 1, bytes([192, 0, 2, 1])) + rr(pointer, 1, bytes([192, 0, 2, 2])))
    seed(t, "aaaa", dns_header(an=1) + q + b"\x00\x1c\x00\x01" + rr(pointer, 28, bytes([0x20, 0x01, 0x0d, 0xb8]) + bytes(11) + b"\x01"))
    # www.example.com CNAME web.example.com (compressed against the question), then its A record.
    target = b"\x03web\xc0\x10"
    target_at = 12 + len(q) + 4 + 2 + 10
    seed(t, "cname-chain", dns_header(an=2) + q + b"\x00\x01\x00\x01" + rr(pointer, 5, target)
         + rr(bytes([0xC0, target_at]), 1, bytes([198, 51, 100, 7])))
    seed(t, "other-types-skipped", dns_header(an=2) + q + b"\x00\x01\x00\x01" + rr(pointer, 16, b"\x03abc")
         + rr(pointer, 1, bytes([10, 0, 0, 1]), rclass=3))
    seed(t, "nxdomain", dns_header(flags=0x8183) + q + b"\x00\x01\x00\x01")
    seed(t, "servfail-no-question", dns_header(flags=0x8182, qd=0))
    seed(t, "truncated-tc", dns_header(flags=0x8380) + q + b"\x00\x01\x00\x01")
    seed(t, "pointer-loop", dns_header(an=1) + q + b"\x00\x01\x00\x01" + b"\x01a\xc0" + bytes([12 + len(q) + 4]))
    seed(t, "upper-case-question", dns_header(an=1) + dns_name("WWW.Example.COM") + b"\x00\x01\x00\x01"
         + rr(pointer, 1, bytes([127, 0, 0, 1])))
    # Host names as text (the input is also read as a name typed by the user).
    seed(t, "name-fqdn", "www.example.com.")
    seed(t, "name-underscore", "_service.local")
    seed(t, "name-long-label", "a" * 63 + ".example")


# --- /etc/hosts and /etc/resolv.conf -------------------------------------------------------------

def resolver_seeds():
    t = "resolver-files"
    seed(t, "hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
         "# comment\n192.0.2.10 Gateway.Example.com. gateway  # trailing comment\n"
         "ff02::1 ip6-allnodes\n::ffff:198.51.100.4 mapped\n2001:db8::1:0:0:1 doc\n")
    seed(t, "hosts-bad-lines", "not-an-address name\n10.0.0.1\nfe80::1%eth0 zoned\n010.0.0.1 octal\r\n1.2.3.4 ok\r\n")
    seed(t, "resolv-conf", "# generated\nsearch example.com\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n"
         "nameserver 10.0.0.53\nnameserver 10.0.0.54\noptions timeout:2 attempts:3 rotate ndots:2\n")
    seed(t, "resolv-conf-odd", "nameserver fe80::1%eth0\n; comment\noptions timeout:0 attempts:99 timeout:x\n"
         "domain local\nnameserver\n")
    seed(t, "addresses", "1.2.3.4 255.255.255.255 0.0.0.0 :: ::1 1:2:3:4:5:6:7:8 1::8 ::ffff:1.2.3.4 1:2:3:4:5:6:1.2.3.4 "
         "1:: 1:2:3:4:5:6:7:: ::1.2.3.4 1.2.3 1.2.3.04 1:2:3:4:5:6:7:8:9 :1 1::2::3 12345::\n")


# --- --config files (Sources/LocalProxy/Configuration.swift) ------------------------------------

def config_seeds():
    t = "config-file"
    seed(t, "destination", "# device\nregion = us-east-1\ndestination-app = SSH=22, HTTP=localhost:80,RDP=[::1]:3389\n"
         "access-token = AQGAAXiTokenFromTheFile\nverbose = 5\nconnect-retries = 5\nno-ssl-host-verify = false\n")
    seed(t, "source", "proxy-endpoint = data.tunneling.iot.eu-west-1.amazonaws.com:443\nsource-listen-port = SSH=5555,HTTP=\n"
         "destination-client-type = V2\nlocal-bind-address = 0.0.0.0\nclient-token = 0123456789abcdef0123456789abcdef\n"
         "ping-interval-ms = 5000\nmax-payload = 1024\ndns = builtin\n")
    seed(t, "token-file", "mode = destination\ndestination-app = /run/app.sock\naccess-token-file = /etc/token\n"
         "capath = /etc/ssl/certs, /usr/local/share/ca\n\0AQGAAXiTokenFromItsFile\n")
    seed(t, "config-dir", "mode = dst\nregion = cn-north-1\n\0# services\n[section]\nSSH = 22\nHTTP=127.0.0.1:8080\nbad line\n"
         "UI=/run/ui.sock\nSSH=23\n")
    seed(t, "errors", "mode = sideways\nunknown-option = 1\n")
    seed(t, "windows-lines", "region = us-west-2\r\ndestination-app = 22\r\nno-ssl-host-verify = yes\r\n")


# --- The emulator's control-plane requests (Sources/TunnelService/HTTPRequestParser.swift) --------

OPEN_TUNNEL = ('{"description":"fuzz","destinationConfig":{"thingName":"gateway-1","services":["SSH","HTTP"]},'
               '"tags":[{"key":"team","value":"iot"}],"timeoutConfig":{"maxLifetimeTimeoutMinutes":720}}')


def http_request(body, target="IoTSecuredTunneling.OpenTunnel", extra=""):
    return (f"POST / HTTP/1.1\r\nHost: api.tunneling.iot.us-east-1.amazonaws.com\r\n"
            f"Content-Type: application/x-amz-json-1.1\r\nX-Amz-Target: {target}\r\n"
            f"Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/IoTSecuredTunneling/aws4_request, "
            f"SignedHeaders=host, Signature=0\r\n{extra}Content-Length: {len(body)}\r\n\r\n{body}")


def http_seeds():
    t = "http-request"
    seed(t, "open-tunnel", http_request(OPEN_TUNNEL))
    seed(t, "pipelined", http_request('{"tunnelId":"tunnel-1"}', "IoTSecuredTunneling.DescribeTunnel")
         + http_request('{}', "IoTSecuredTunneling.ListTunnels"))
    seed(t, "expect-continue", http_request('{"tunnelId":"tunnel-1","delete":true}', "IoTSecuredTunneling.CloseTunnel",
                                            extra="Expect: 100-continue\r\n"))
    seed(t, "http10-keep-alive", "GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    seed(t, "chunked-refused", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    seed(t, "two-lengths", "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx")
    seed(t, "too-large-body", "POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")


def json_seeds():
    t = "json-value"
    seed(t, "open-tunnel", OPEN_TUNNEL)
    seed(t, "close-tunnel", '{"tunnelId":"tunnel-1","delete":true}')
    seed(t, "rotate", '{"tunnelId":"tunnel-1","clientMode":"ALL","destinationConfig":{"services":["SSH"]}}')
    seed(t, "list", '{"thingName":"gateway-1","maxResults":2,"nextToken":"1"}')
    seed(t, "tags", '{"resourceArn":"arn:aws:iot:us-east-1:123456789012:tunnel/tunnel-1",'
         '"tags":[{"key":"a","value":"b"}],"tagKeys":["a"]}')
    seed(t, "values", '[null,true,false,0,-0,1e15,1.5e-7,-12345678901234567890,"\\u00e9\\n\\"\\\\",{"":{}},[]]')


# --- The tunnel notification the MQTT agent reads (Sources/TunnelCore/TunnelNotification.swift) --

NOTIFY_TOKEN = "AQGAAXiSecretTokenValue-0123456789abcdef"


def tunnel_notification_seeds():
    t = "tunnel-notification"
    example = ('{"clientAccessToken":"%s","clientMode":"destination","region":"us-east-1","services":["SSH"]}'
               % NOTIFY_TOKEN)
    seed(t, "aws-example", example)
    seed(t, "three-services", ' {\n  "services" : [ "SSH" , "HTTP", "RDP:3389_a-b" ],\t"region":"eu-west-1",\r\n'
         '"clientMode":"destination", "clientAccessToken":"%s" }\n' % NOTIFY_TOKEN)
    seed(t, "escapes", '{"clientAccessToken":"AQGA\\u0041\\/x\\"y\\\\z","clientMode":"source","region":"cn-north-1",'
         '"services":["SSH"],"note":"\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00","caf\\u00e9":1}')
    seed(t, "unknown-nested", example[:-1] + ',"x":{"a":[1,-0,2.5e-3,1E+2,true,false,null,{"b":[[[]]]}]},"y":""}')
    seed(t, "depth-limit", example[:-1] + ',"x":' + "[" * 15 + "]" * 15 + "}")
    seed(t, "depth-bomb", example[:-1] + ',"x":' + "[" * 17 + "]" * 17 + "}")
    seed(t, "duplicate-key", example[:-1] + ',"region":"eu-west-1"}')
    seed(t, "lone-surrogate", example.replace("AQGAAXi", "AQGA\\uD800Xi"))
    seed(t, "control-character", example.replace("AQGAAXi", "AQGA\tXi"))
    seed(t, "bad-utf8", example.replace("SSH", "S\xc3\x28H").encode("latin-1"))
    seed(t, "trailing-bytes", example + "{}")
    seed(t, "wrong-types", '{"clientAccessToken":42,"clientMode":null,"region":["us-east-1"],"services":"SSH"}')
    seed(t, "bad-services", example.replace('["SSH"]', '["SSH","S H","SSH",""]'))
    seed(t, "empty", "{}")
    seed(t, "truncated", example[:40])


# --- The upgrade request the emulator reads (Sources/TunnelService/Admission.swift) ---------------

def upgrade_request(mode="destination", token="AQGAAXiToken", extra="", protocols="aws.iot.securetunneling-3.0, "
                    "aws.iot.securetunneling-2.0", key="dGhlIHNhbXBsZSBub25jZQ=="):
    text = (f"GET /tunnel?local-proxy-mode={mode} HTTP/1.1\r\nHost: data.tunneling.iot.us-east-1.amazonaws.com\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Protocol: {protocols}\r\n")
    if token is not None:
        text += f"access-token: {token}\r\n"
    return text + extra + "\r\n"


def upgrade_request_seeds():
    t = "upgrade-request"
    seed(t, "destination", upgrade_request())
    seed(t, "source-client-token", upgrade_request("source", extra="client-token: 0123456789abcdef0123456789abcdef\r\n"
                                                   "User-Agent: localproxy\r\n"))
    seed(t, "cookie-token", upgrade_request(token=None, extra='Cookie: a=1; awsiot-tunnel-token="AQGAAXiCookie"\r\n',
                                            protocols="aws.iot.securetunneling-1.0"))
    seed(t, "two-tokens", upgrade_request(extra="Cookie: awsiot-tunnel-token=other\r\n"))
    seed(t, "bad-key", upgrade_request(key="c2hvcnQ="))
    seed(t, "no-subprotocol", upgrade_request(protocols="chat"))
    seed(t, "wrong-path", "GET /other?local-proxy-mode=source&x=1 HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")
    seed(t, "post", "POST /tunnel HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    seed(t, "then-frames", upgrade_request().encode() + frame(0x2, b"early", key=RFC_KEY))


# --- A web proxy's answer to CONNECT, a proxy URL, a no_proxy list (docs/PROTOCOL.md §2.3) -------


def web_proxy_seeds():
    t = "web-proxy"
    seed(t, "squid-200", "HTTP/1.1 200 Connection established\r\n\r\n")
    seed(t, "200-then-tls", b"HTTP/1.0 200 OK\r\nProxy-Agent: x\r\n\r\n\x16\x03\x03\x00\x7a\x02")
    seed(t, "407", "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"gw\"\r\n"
         "Content-Length: 5\r\n\r\nhello")
    seed(t, "403", "HTTP/1.1 403 Forbidden\r\nX-Squid-Error: ERR_ACCESS_DENIED 0\r\n\r\n")
    seed(t, "bare-lf", "HTTP/1.1 200 OK\n\n")
    seed(t, "url-credentials", "http://user:p%40ss%3Aw%20rd@proxy.example.com:8080/")
    seed(t, "url-ipv6", "http://[2001:db8::1]:3128")
    seed(t, "url-bare", "10.0.0.1")
    seed(t, "no-proxy", "localhost, .amazonaws.com,*.example.com,[::1],127.0.0.1")


def main(argv):
    if len(argv) != 1:
        sys.exit(__doc__)
    websocket_seeds()
    mqtt_seeds()
    tunnel_seeds()
    upgrade_response_seeds()
    web_proxy_seeds()
    dns_seeds()
    resolver_seeds()
    config_seeds()
    http_seeds()
    json_seeds()
    upgrade_request_seeds()
    tunnel_notification_seeds()
    for target, seeds in SEEDS.items():
        directory = os.path.join(argv[0], target)
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        for name, data in seeds.items():
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
