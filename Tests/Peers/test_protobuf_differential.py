"""Differential tests: the Swift tunnel-message codec against the official protobuf runtime.

The probe sub-commands used here are:

* `pb-decode`: reads length-prefixed tunnel frames on stdin and prints, per frame, the
  canonical text of the decoded message or `error: <description>`.
* `pb-random --seed S --count N`: prints N lines `<canonical>\t<hex encoding>` made by the
  Swift random generator and encoder.
* `pb-encode`: reads canonical lines and prints the hex of the Swift encoding of each (or
  `error: <description>` when the Swift side refuses the message).

Python's protobuf runtime is the oracle everywhere: whenever a test needs to know what a
byte string means, it asks `ParseFromString`, so the tests follow the reference semantics
rather than this file's reading of the specification.
"""

from __future__ import annotations

import random
import string

import pytest
from google.protobuf.message import DecodeError

from conftest import (
    MAX_FRAME_BODY,
    MAX_PAYLOAD,
    canonical,
    frame,
    message_from_canonical,
    run_probe,
)

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1

# Wire types of the protobuf encoding.
VARINT, FIXED64, LEN, SGROUP, EGROUP, FIXED32 = 0, 1, 2, 3, 4, 5

# Enum values outside 0..7 must survive decoding because proto3 enums are open; the
# negative ones also exercise the 10-byte sign-extended varint form.
UNKNOWN_TYPES = (8, 9, 42, 1000, INT32_MAX, -1, -3, -1000, INT32_MIN)

# Service ids mix ASCII with 2-, 3- and 4-byte UTF-8 sequences so that a decoder that
# counts characters instead of bytes, or mangles non-ASCII text, shows up.
SERVICE_ALPHABET = string.ascii_letters + string.digits + "-_." + "éßüжΩ日本語🚀🔐"


# --------------------------------------------------------------------------------------
# A minimal protobuf writer, used to build encodings that libprotobuf never emits.
# --------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """Base-128 varint; negative numbers take the 64-bit two's complement, as int32 does."""
    if value < 0:
        value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def f_varint(field: int, value: int) -> bytes:
    return key(field, VARINT) + varint(value)


def f_len(field: int, data: bytes) -> bytes:
    return key(field, LEN) + varint(len(data)) + data


def f_fixed32(field: int, data: bytes) -> bytes:
    assert len(data) == 4
    return key(field, FIXED32) + data


def f_fixed64(field: int, data: bytes) -> bytes:
    assert len(data) == 8
    return key(field, FIXED64) + data


def f_group(field: int, inner: bytes) -> bytes:
    return key(field, SGROUP) + inner + key(field, EGROUP)


def known_pieces(msg) -> list[bytes]:
    """Encode each non-default field of `msg` separately, in field-number order.

    Keeping the pieces apart lets a test reorder them or slip foreign fields between
    them; joined in order they must equal what libprotobuf produces.
    """
    pieces = []
    if msg.type:
        pieces.append(f_varint(1, msg.type))
    if msg.streamId:
        pieces.append(f_varint(2, msg.streamId))
    if msg.ignorable:
        pieces.append(f_varint(3, 1))
    if msg.payload:
        pieces.append(f_len(4, msg.payload))
    if msg.serviceId:
        pieces.append(f_len(5, msg.serviceId.encode("utf-8")))
    for service in msg.availableServiceIds:
        pieces.append(f_len(6, service.encode("utf-8")))
    if msg.connectionId:
        pieces.append(f_varint(7, msg.connectionId))
    return pieces


# --------------------------------------------------------------------------------------
# Random messages
# --------------------------------------------------------------------------------------


def random_text(rng: random.Random, max_chars: int) -> str:
    return "".join(rng.choice(SERVICE_ALPHABET) for _ in range(rng.randint(1, max_chars)))


def random_message(pb, rng: random.Random):
    msg = pb.Message()
    msg.type = rng.randrange(8) if rng.random() < 0.85 else rng.choice(UNKNOWN_TYPES)

    roll = rng.random()
    if roll < 0.15:
        msg.streamId = 0
    elif roll < 0.50:
        msg.streamId = rng.randint(1, 10)
    elif roll < 0.60:
        msg.streamId = rng.randint(-10, -1)
    elif roll < 0.70:
        msg.streamId = rng.choice((INT32_MIN, INT32_MAX, 127, 128, 16383, 16384, -128))
    else:
        msg.streamId = rng.randint(INT32_MIN, INT32_MAX)

    msg.ignorable = rng.random() < 0.3

    # Mostly small payloads, as on an interactive tunnel; a few large ones up to the
    # maximum keep the 3-byte length varints and the size limit in play without making
    # the stream so big that a debug build of the probe gets slow.
    roll = rng.random()
    if roll < 0.10:
        size = 0
    elif roll < 0.94:
        size = rng.randint(1, 300)
    elif roll < 0.98:
        size = rng.randint(301, MAX_PAYLOAD)
    else:
        size = MAX_PAYLOAD
    msg.payload = rng.randbytes(size)

    if rng.random() < 0.6:
        msg.serviceId = random_text(rng, 24)
    for _ in range(rng.choice((0, 0, 1, 2, 3, 4))):
        msg.availableServiceIds.append(random_text(rng, 16))

    roll = rng.random()
    if roll < 0.30:
        msg.connectionId = 0
    elif roll < 0.70:
        msg.connectionId = rng.randint(1, 10)
    elif roll < 0.85:
        msg.connectionId = rng.choice((127, 128, 16383, 16384, INT32_MAX, 2**31, UINT32_MAX))
    else:
        msg.connectionId = rng.randint(0, UINT32_MAX)
    return msg


def fixed_corner_messages(pb):
    """Messages every run must contain, whatever the random generator happens to pick."""
    M = pb.Message
    return [
        M(),
        M(type=1, streamId=INT32_MIN, connectionId=UINT32_MAX),
        M(type=2, streamId=INT32_MAX, serviceId="SSH", connectionId=1),
        M(type=9, ignorable=True),
        M(type=-3, ignorable=True, streamId=-1),
        M(type=INT32_MIN, streamId=-2),
        M(type=1, streamId=1, payload=bytes(range(256)) * 252, serviceId="日本語🚀"),
        M(type=1, streamId=3, payload=b"\xff" * MAX_PAYLOAD, serviceId="é", connectionId=7),
        M(type=5, availableServiceIds=["SSH", "RDP", "ünï", "🔐x"]),
        M(type=6, streamId=1, connectionId=2**31, serviceId="a\u0000b\ufffe"),
    ]


def random_corpus(pb, seed: int, count: int):
    rng = random.Random(seed)
    corpus = fixed_corner_messages(pb)
    while len(corpus) < count:
        corpus.append(random_message(pb, rng))
    return corpus


def decode_with_probe(probe, bodies: list[bytes]) -> list[str]:
    lines = run_probe(probe, "pb-decode", stdin=b"".join(frame(body) for body in bodies), timeout=30)
    assert len(lines) == len(bodies), (
        f"pb-decode printed {len(lines)} lines for {len(bodies)} frames; last lines: {lines[-3:]}"
    )
    return lines


def parse(pb, body: bytes):
    msg = pb.Message()
    msg.ParseFromString(body)
    return msg


def assert_lines_equal(got: list[str], expected: list[str], inputs: list[bytes]):
    """Report the first mismatching frame with its input bytes, which is what a fix needs."""
    for index, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            shown = inputs[index].hex()
            if len(shown) > 400:
                shown = shown[:400] + f"... ({len(inputs[index])} bytes)"
            mismatches = sum(1 for a, b in zip(got, expected) if a != b)
            pytest.fail(
                f"frame {index} of {len(expected)} ({mismatches} mismatching in total)\n"
                f"input:    {shown}\nexpected: {e[:400]}\ngot:      {g[:400]}",
                pytrace=False,
            )
    assert len(got) == len(expected)


# --------------------------------------------------------------------------------------
# Self-checks of the helpers; these need no probe and guard the oracle itself.
# --------------------------------------------------------------------------------------


def test_canonical_text_of_known_messages(pb):
    M = pb.Message
    assert canonical(M()) == "type=0 stream=0 ignorable=0 payload= service= ids= conn=0"
    assert (
        canonical(M(type=1, streamId=-1, ignorable=True, payload=b"hi", serviceId="SSH", connectionId=UINT32_MAX))
        == "type=1 stream=-1 ignorable=1 payload=6869 service=535348 ids= conn=4294967295"
    )
    assert canonical(M(type=5, availableServiceIds=["SSH1", "é"])) == (
        "type=5 stream=0 ignorable=0 payload= service= ids=53534831,c3a9 conn=0"
    )
    assert canonical(M(type=-3)).startswith("type=-3 ")
    assert canonical(M(availableServiceIds=["", "a"])).endswith(" ids=,61 conn=0")


def test_canonical_text_round_trips_through_parser(pb):
    for msg in random_corpus(pb, seed=11, count=500):
        line = canonical(msg)
        assert message_from_canonical(pb, line) == msg, line[:200]


def test_hand_written_encoder_matches_protobuf(pb):
    # The unusual encodings below are assembled from these pieces, so they must be
    # exactly libprotobuf's bytes when kept in order.
    for msg in random_corpus(pb, seed=12, count=500):
        assert b"".join(known_pieces(msg)) == msg.SerializeToString(), canonical(msg)[:200]
    assert len(max((m.SerializeToString() for m in random_corpus(pb, 13, 3000)), key=len)) <= MAX_FRAME_BODY


def test_random_corpus_covers_every_field_and_edge(pb):
    corpus = random_corpus(pb, seed=2024, count=3000)
    types = {m.type for m in corpus}
    assert set(range(8)) <= types
    assert any(t > 7 for t in types) and any(t < 0 for t in types)
    streams = {m.streamId for m in corpus}
    assert {0, INT32_MIN, INT32_MAX} <= streams and any(s < 0 for s in streams)
    assert any(m.ignorable for m in corpus)
    sizes = [len(m.payload) for m in corpus]
    assert 0 in sizes and MAX_PAYLOAD in sizes and any(300 < s < MAX_PAYLOAD for s in sizes)
    assert any(any(ord(c) > 0xFFFF for c in m.serviceId) for m in corpus)
    assert {len(m.availableServiceIds) for m in corpus} == {0, 1, 2, 3, 4}
    assert all("" not in m.availableServiceIds for m in corpus)
    assert {0, UINT32_MAX} <= {m.connectionId for m in corpus}


# --------------------------------------------------------------------------------------
# Python -> Swift: the Swift decoder against protobuf-encoded bytes.
# --------------------------------------------------------------------------------------


def test_decode_random_messages_encoded_by_protobuf(pb, probe):
    corpus = random_corpus(pb, seed=20240601, count=3000)
    bodies = [m.SerializeToString() for m in corpus]
    got = decode_with_probe(probe, bodies)
    assert_lines_equal(got, [canonical(m) for m in corpus], bodies)


# Known fields sent with a wire type other than their declared one. Protobuf files such
# fields under unknown fields and leaves the declared field untouched, so a decoder must
# skip them instead of failing or reinterpreting their bytes.
WRONG_WIRE_TYPE_PIECES = [
    f_fixed32(1, b"\x02\x00\x00\x00"),
    f_fixed64(1, b"\x03" + b"\x00" * 7),
    f_len(1, b"\x04"),
    f_group(1, f_varint(1, 5)),
    f_len(2, b"\x05"),
    f_fixed32(2, b"\x06\x00\x00\x00"),
    f_fixed64(3, b"\x01" + b"\x00" * 7),
    f_len(3, b"\x01"),
    f_varint(4, 7),
    f_fixed32(4, b"abcd"),
    f_group(4, f_len(4, b"inner")),
    f_varint(5, 65),
    f_fixed64(5, b"ABCDEFGH"),
    f_varint(6, 66),
    f_fixed32(6, b"WXYZ"),
    f_len(7, b"\x09"),
    f_fixed32(7, b"\x09\x00\x00\x00"),
    f_group(7, b""),
]


def random_unknown_piece(rng: random.Random, depth: int = 0) -> bytes:
    """One field that the schema does not declare, of a random wire type."""
    field = rng.choice((8, 9, 15, 16, 100, 2047, 2048, 65535, 2**29 - 1))
    kind = rng.randrange(5)
    if kind == 0:
        return f_varint(field, rng.choice((0, 1, 300, 2**63, 2**64 - 1, rng.getrandbits(64))))
    if kind == 1:
        return f_fixed64(field, rng.randbytes(8))
    if kind == 2:
        return f_len(field, rng.randbytes(rng.choice((0, 1, 5, 127, 128, 300))))
    if kind == 3:
        # Groups may hold anything, including fields numbered like known ones: those
        # belong to the group and must not change the message.
        inner = [f_varint(1, 6), f_len(4, b"not the payload"), f_varint(7, 99)]
        if depth < 2:
            inner += [random_unknown_piece(rng, depth + 1) for _ in range(rng.randint(0, 2))]
        rng.shuffle(inner)
        return f_group(field, b"".join(inner[: rng.randint(0, len(inner))]))
    return f_fixed32(field, rng.randbytes(4))


def unusual_encodings(pb) -> list[bytes]:
    """Encodings that protobuf accepts but that a canonical encoder never produces."""
    S = lambda text: text.encode("utf-8")  # noqa: E731 - keeps the table below readable
    bodies = [
        b"",  # a zero-length frame is a message with every field at its default
        # Fields in descending order.
        f_varint(7, 3) + f_len(6, S("B")) + f_len(6, S("A")) + f_len(5, S("SSH"))
        + f_len(4, b"hi") + f_varint(3, 1) + f_varint(2, 1) + f_varint(1, 1),
        # Repeated scalars: the last occurrence wins, even an explicit default.
        f_varint(1, 1) + f_varint(1, 6),
        f_varint(1, 3) + f_varint(1, 0),
        f_varint(2, 5) + f_varint(2, -7),
        f_varint(3, 1) + f_varint(3, 0),
        f_varint(7, 9) + f_varint(7, 0),
        f_varint(7, UINT32_MAX) + f_varint(2, 4) + f_varint(7, 12),
        f_len(4, b"first") + f_len(4, b"second"),
        f_len(4, b"x" * 1000) + f_len(4, b""),
        f_len(5, S("one")) + f_len(5, S("zwei")),
        f_len(5, S("日本")) + f_len(5, b""),
        # Repeated strings keep every element, in wire order, wherever they appear.
        f_len(6, S("a")) + f_varint(1, 5) + f_len(6, S("b")) + f_varint(2, 3) + f_len(6, S("c")),
        # Unknown fields of every wire type, alone and between known ones.
        f_varint(8, 1),
        f_varint(2**29 - 1, 2**64 - 1),
        f_fixed64(9, b"12345678"),
        f_len(10, b""),
        f_len(10, bytes(300)),
        f_group(11, b""),
        f_group(11, f_varint(1, 4) + f_group(12, f_len(5, S("nested")) + f_group(12, b"")) + f_fixed32(13, b"abcd")),
        f_fixed32(14, b"\xff\xff\xff\xff"),
        f_varint(1, 2) + f_varint(8, 77) + f_varint(2, 9) + f_fixed64(9, b"\x00" * 8) + f_len(5, S("SSH"))
        + f_group(16, f_varint(2, 1)) + f_varint(7, 4) + f_fixed32(17, b"\x01\x02\x03\x04") + f_len(4, b"data"),
        # Known field numbers with the wrong wire type, after and before valid values.
        f_varint(1, 2) + f_fixed32(1, b"\x07\x00\x00\x00"),
        f_fixed64(2, b"\x01" * 8) + f_varint(2, 33),
        f_varint(3, 1) + f_len(3, b"\x00"),
        f_len(4, b"kept") + f_varint(4, 1),
        f_len(5, S("kept")) + f_fixed32(5, b"lost"),
        f_len(6, S("kept")) + f_varint(6, 1) + f_len(6, S("also")),
        f_varint(7, 5) + f_fixed64(7, b"\x06" + b"\x00" * 7),
        b"".join(WRONG_WIRE_TYPE_PIECES),
        # Text that is valid UTF-8 although unusual: NUL and a non-character.
        f_len(5, S("a\u0000b")) + f_len(6, S("\ufffe")),
        # Known varints of maximal width.
        f_varint(1, INT32_MIN) + f_varint(2, INT32_MIN) + f_varint(7, UINT32_MAX),
    ]
    bodies += [piece for piece in WRONG_WIRE_TYPE_PIECES]

    # Random messages whose fields are shuffled, partly repeated and interleaved with
    # unknown and wrongly typed fields.
    rng = random.Random(77)
    for _ in range(600):
        msg = random_message(pb, rng)
        if len(msg.payload) > 4000:
            msg.payload = msg.payload[:4000]
        pieces = known_pieces(msg)
        rng.shuffle(pieces)
        for _ in range(rng.randint(0, 2)):
            # An extra earlier occurrence of a scalar, which the later real one overrides.
            pieces.insert(0, rng.choice((f_varint(1, 4), f_varint(2, 99), f_varint(7, 5), f_len(5, b"old"))))
        for _ in range(rng.randint(0, 5)):
            pieces.insert(rng.randint(0, len(pieces)), random_unknown_piece(rng))
        for _ in range(rng.randint(0, 2)):
            pieces.insert(rng.randint(0, len(pieces)), rng.choice(WRONG_WIRE_TYPE_PIECES))
        bodies.append(b"".join(pieces))
    return bodies


def test_unusual_encodings_are_accepted_by_protobuf(pb):
    # Guards the oracle: every body must be valid for protobuf, or the probe test below
    # would be comparing against nothing.
    for body in unusual_encodings(pb):
        assert len(body) <= MAX_FRAME_BODY
        parse(pb, body)
    # Spot checks that the runtime resolves these cases as the test expects.
    assert parse(pb, f_varint(1, 3) + f_varint(1, 0)).type == 0
    assert parse(pb, f_varint(1, 2) + f_fixed32(1, b"\x07\x00\x00\x00")).type == 2
    assert parse(pb, f_len(6, b"kept") + f_varint(6, 1) + f_len(6, b"also")).availableServiceIds == ["kept", "also"]
    assert parse(pb, f_group(11, f_varint(1, 4))).type == 0


def test_decode_unusual_encodings_like_protobuf(pb, probe):
    bodies = unusual_encodings(pb)
    expected = [canonical(parse(pb, body)) for body in bodies]
    assert_lines_equal(decode_with_probe(probe, bodies), expected, bodies)


# Varints that are legal for protobuf although no encoder writes them: non-minimal forms,
# 5-byte negative int32, and values wider than the field, which protobuf truncates to the
# low 32 bits. Each entry states the meaning the test expects, and the test also checks
# that protobuf agrees, so a change of runtime behaviour is noticed rather than absorbed.
D = "ignorable=0 payload= service= ids="
LENIENT_VARINTS = [
    ("880001", f"type=1 stream=0 {D} conn=0"),  # tag 0x08 written in two bytes
    ("888080800005", f"type=5 stream=0 {D} conn=0"),  # tag 0x08 written in five bytes
    ("088200", f"type=2 stream=0 {D} conn=0"),  # value 2 written in two bytes
    ("0882808080808080808000", f"type=2 stream=0 {D} conn=0"),  # value 2 written in ten bytes
    ("0882808080808080808001", f"type=2 stream=0 {D} conn=0"),  # bit 63 set, dropped by int32
    ("088280808080808080807f", f"type=2 stream=0 {D} conn=0"),  # tenth byte carries bits past 64
    ("10ffffffff0f", f"type=0 stream=-1 {D} conn=0"),  # streamId -1 in five bytes
    ("108080808008", f"type=0 stream=-2147483648 {D} conn=0"),  # INT32_MIN in five bytes
    ("108580808010", f"type=0 stream=5 {D} conn=0"),  # bit 32 set above the value 5
    ("088580808010", f"type=5 stream=0 {D} conn=0"),  # the same for the enum
    ("088080808010", f"type=0 stream=0 {D} conn=0"),  # 2**32 truncates to 0
    ("38ffffffffffffffffff01", f"type=0 stream=0 {D} conn=4294967295"),  # 10-byte uint32
    ("388080808010", f"type=0 stream=0 {D} conn=0"),  # connectionId 2**32 truncates to 0
    ("1802", f"type=0 stream=0 ignorable=1 payload= service= ids= conn=0"),  # bool 2 is true
    ("18808080808020", f"type=0 stream=0 ignorable=1 payload= service= ids= conn=0"),  # 2**40
    ("18ffffffffffffffffff01", f"type=0 stream=0 ignorable=1 payload= service= ids= conn=0"),
    ("1880808080808080808000", f"type=0 stream=0 {D} conn=0"),  # bool 0 in ten bytes
]


def test_lenient_varints_mean_what_protobuf_says(pb):
    for body_hex, expected in LENIENT_VARINTS:
        assert canonical(parse(pb, bytes.fromhex(body_hex))) == expected, body_hex


def test_decode_lenient_varints_like_protobuf(pb, probe):
    bodies = [bytes.fromhex(body_hex) for body_hex, _ in LENIENT_VARINTS]
    expected = [text for _, text in LENIENT_VARINTS]
    assert_lines_equal(decode_with_probe(probe, bodies), expected, bodies)


# Bodies protobuf rejects with DecodeError. Each is followed in the stream by a valid
# sentinel frame, so a decoder that reads past a frame's end, or stops after an error,
# is caught by the sentinel's line.
MALFORMED = {
    "truncated varint value": "0880",
    "truncated tag": "88",
    "truncated 10-byte varint": "10ffffffffffffffffff",
    "varint of 11 bytes": "08ffffffffffffffffffff01",
    "tag varint of 6 bytes": "f8ffffffff0f01",
    "length past the end": "22056869",
    "length past the end of a string": "2a0a535348",
    "truncated length varint": "2280",
    "length over 2 GiB": "228080808008",
    "field number 0 (varint)": "0001",
    "field number 0 (length-delimited)": "0200",
    "field number 0 in a two-byte tag": "800001",
    "wire type 6": "0e01",
    "wire type 7": "0f01",
    "wire type 6 on unknown field": "4e",
    "end-group without start": "0c",
    "end-group of unknown field without start": "44",
    "end-group with the wrong number": "0b14",
    "group never closed": "0b0801",
    "nested group closed by the outer number": "0b130c14",
    "bad wire type inside a group": "4b0f4c",
    "truncated fixed32": "0d0102",
    "truncated fixed64": "09010203",
    "garbage after valid fields": "080210010e",
    "serviceId: lone continuation byte": "2a0180",
    "serviceId: truncated sequence": "2a01c3",
    "serviceId: overlong encoding": "2a02c080",
    "serviceId: UTF-16 surrogate": "2a03eda080",
    "serviceId: above U+10FFFF": "2a04f4908080",
    "serviceId: byte 0xff": "2a01ff",
    "serviceId: bad byte after valid text": "2a045353c328",
    "availableServiceIds: invalid UTF-8": "3202c328",
    "availableServiceIds: invalid second element": "3201413201ff",
}


def test_malformed_bodies_are_rejected_by_protobuf(pb):
    accepted = []
    for name, body_hex in MALFORMED.items():
        try:
            parse(pb, bytes.fromhex(body_hex))
        except DecodeError:
            continue
        accepted.append(name)
    assert accepted == [], f"protobuf accepts these, so they are not malformed: {accepted}"


def test_decode_rejects_malformed_bodies(pb, probe):
    names = list(MALFORMED)
    bodies = []
    for index, name in enumerate(names):
        bodies.append(bytes.fromhex(MALFORMED[name]))
        bodies.append(pb.Message(type=1, streamId=index + 1, payload=name.encode()).SerializeToString())
    lines = decode_with_probe(probe, bodies)
    problems = []
    for index, name in enumerate(names):
        bad_line, sentinel_line = lines[2 * index], lines[2 * index + 1]
        if not bad_line.startswith("error:"):
            problems.append(f"{name} ({MALFORMED[name]}): expected an error line, got {bad_line!r}")
        expected_sentinel = canonical(parse(pb, bodies[2 * index + 1]))
        if sentinel_line != expected_sentinel:
            problems.append(f"frame after {name}: expected {expected_sentinel!r}, got {sentinel_line!r}")
    assert not problems, "\n".join(problems)


def test_decode_enforces_payload_limit(pb, probe):
    # Protobuf has no opinion on payload size; the tunnel protocol caps it at 64,512
    # bytes, so one byte more must be refused and the limit itself accepted.
    M = pb.Message
    at_limit = M(type=1, streamId=1, payload=b"\xab" * MAX_PAYLOAD, serviceId="SSH", connectionId=1)
    over_by_one = M(type=1, streamId=1, payload=b"\xab" * (MAX_PAYLOAD + 1))
    far_over = M(type=1, streamId=2, payload=bytes(65_000))
    bodies = [
        over_by_one.SerializeToString(),
        at_limit.SerializeToString(),
        far_over.SerializeToString(),
        M(type=4).SerializeToString(),
    ]
    for body in bodies:
        parse(pb, body)
    lines = decode_with_probe(probe, bodies)
    assert lines[0].startswith("error:") and "payload" in lines[0], lines[0][:300]
    assert lines[1] == canonical(at_limit)
    assert lines[2].startswith("error:") and "payload" in lines[2], lines[2][:300]
    assert lines[3] == canonical(M(type=4))


# --------------------------------------------------------------------------------------
# Swift -> Python: the Swift encoder against protobuf's parser and serializer.
# --------------------------------------------------------------------------------------


def random_from_probe(probe, seed: int, count: int) -> list[tuple[str, str]]:
    lines = run_probe(probe, "pb-random", "--seed", str(seed), "--count", str(count))
    assert len(lines) == count, f"pb-random printed {len(lines)} lines, expected {count}"
    pairs = []
    for line in lines:
        text, sep, hex_bytes = line.partition("\t")
        assert sep == "\t", f"no tab in pb-random line: {line[:200]!r}"
        pairs.append((text, hex_bytes))
    return pairs


@pytest.mark.parametrize("seed", [1, 2, 987654321])
def test_swift_random_messages_match_protobuf(pb, probe, seed):
    pairs = random_from_probe(probe, seed, 3000)
    for index, (text, hex_bytes) in enumerate(pairs):
        ours = bytes.fromhex(hex_bytes)
        described = message_from_canonical(pb, text)
        expected = described.SerializeToString()
        assert ours == expected, (
            f"line {index}: {text[:300]}\nswift:    {hex_bytes[:300]}\nprotobuf: {expected.hex()[:300]}"
        )
        assert canonical(parse(pb, ours)) == text, f"line {index}: {text[:300]}"
        assert len(described.payload) <= MAX_PAYLOAD
        assert len(ours) <= MAX_FRAME_BODY


def test_swift_random_generator_is_seeded_and_varied(pb, probe):
    first = random_from_probe(probe, 5, 2000)
    again = random_from_probe(probe, 5, 2000)
    other = random_from_probe(probe, 6, 2000)
    assert first == again, "the same seed must reproduce the same messages"
    assert first != other, "different seeds must give different messages"
    # A generator that never sets some field would leave that part of the encoder
    # untested by the comparison above.
    messages = [message_from_canonical(pb, text) for text, _ in first]
    assert any(m.type != 0 for m in messages)
    assert any(m.streamId != 0 for m in messages)
    assert any(m.ignorable for m in messages)
    assert any(m.payload for m in messages)
    assert any(m.serviceId for m in messages)
    assert any(m.availableServiceIds for m in messages)
    assert any(m.connectionId != 0 for m in messages)


# The verified encodings of docs/PROTOCOL.md section 6.1, as canonical text and hex.
SPEC_VECTORS = [
    ("type=2 stream=1 ignorable=0 payload= service=535348 ids= conn=1", "08021001 2a03535348 3801"),
    ("type=1 stream=1 ignorable=0 payload=6869 service=535348 ids= conn=1", "08011001 22026869 2a03535348 3801"),
    ("type=5 stream=0 ignorable=0 payload= service= ids=53534831,53534832 conn=0", "0805 320453534831 320453534832"),
    ("type=5 stream=0 ignorable=0 payload= service= ids= conn=0", "0805"),
    ("type=3 stream=1 ignorable=0 payload= service=535348 ids= conn=0", "08031001 2a03535348"),
    ("type=7 stream=1 ignorable=0 payload= service=535348 ids= conn=2", "08071001 2a03535348 3802"),
    ("type=4 stream=0 ignorable=0 payload= service= ids= conn=0", "0804"),
    ("type=2 stream=-1 ignorable=0 payload= service= ids= conn=0", "0802 10ffffffffffffffffff01"),
]


def test_encode_spec_vectors(pb, probe):
    texts = [text for text, _ in SPEC_VECTORS]
    expected = [hex_bytes.replace(" ", "") for _, hex_bytes in SPEC_VECTORS]
    # The vectors must also be what protobuf itself produces, or the schema is wrong.
    assert [message_from_canonical(pb, t).SerializeToString().hex() for t in texts] == expected
    got = run_probe(probe, "pb-encode", stdin=("\n".join(texts) + "\n").encode())
    assert got == expected


def test_encode_python_messages(pb, probe):
    corpus = random_corpus(pb, seed=31337, count=1500)
    texts = [canonical(m) for m in corpus]
    got = run_probe(probe, "pb-encode", stdin=("\n".join(texts) + "\n").encode(), timeout=30)
    expected = [m.SerializeToString().hex() for m in corpus]
    assert len(got) == len(expected), f"pb-encode printed {len(got)} lines for {len(expected)}"
    assert_lines_equal(got, expected, [t.encode() for t in texts])


def test_encode_refuses_oversized_payload(pb, probe):
    M = pb.Message
    texts = [
        canonical(M(type=1, streamId=1, payload=b"\x01" * (MAX_PAYLOAD + 1))),
        canonical(M(type=1, streamId=1, payload=b"\x01" * MAX_PAYLOAD)),
        canonical(M(type=4)),
    ]
    got = run_probe(probe, "pb-encode", stdin=("\n".join(texts) + "\n").encode())
    assert len(got) == 3, got
    assert got[0].startswith("error:") and "payload" in got[0], got[0][:300]
    assert got[1] == M(type=1, streamId=1, payload=b"\x01" * MAX_PAYLOAD).SerializeToString().hex()
    assert got[2] == "0804"
