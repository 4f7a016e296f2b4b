// Byte-level tests of the WebSocket framing (RFC 6455 §5, with the tunnel's rules of docs/PROTOCOL.md
// §4): literal vectors in and exact bytes or exact errors out, and every way of cutting a stream
// into reads. Helpers in this file are private so that they cannot clash with other test files.
import Testing
import TunnelCore

// MARK: Recording what the decoder produces

/// One event as the tests compare it. The decoder hands out views that die at the next call, so
/// everything is copied into arrays the moment it is seen.
private enum Seen: Equatable, CustomStringConvertible {
    /// A piece of a binary message as delivered; `end` is the decoder's `isMessageEnd`.
    case piece([UInt8], end: Bool)
    /// A whole binary message, its pieces joined (see `joinedMessages`).
    case message([UInt8])
    case ping([UInt8])
    case pong([UInt8])
    case close(UInt16?, [UInt8])

    var description: String {
        switch self {
        case .piece(let b, let end): return "piece(\(b.count) bytes \(hex(b.prefix(16))), end: \(end))"
        case .message(let b): return "message(\(b.count) bytes \(hex(b.prefix(16))))"
        case .ping(let b): return "ping(\(hex(b)))"
        case .pong(let b): return "pong(\(hex(b)))"
        case .close(let code, let b): return "close(\(code.map { String($0) } ?? "nil"), \(hex(b)))"
        }
    }
}

/// Everything one decoding run produced.
private struct Run: Equatable {
    var events: [Seen] = []
    var error: WebSocketProtocolError? = nil
    /// Input bytes the decoder did not consume (after a close frame or an error).
    var unconsumed = 0
    var finished = false
    /// Errors thrown after the first one; a finished decoder must only return nil.
    var laterErrors = 0
    /// Binary pieces whose view did not point into the caller's input (the decoder promises to
    /// unmask in place, never to copy data payloads).
    var piecesOutsideInput = 0
}

/// Feeds `pieces` to a fresh decoder one read at a time, calling `next` until it returns nil or
/// throws, as the proxy's read loop does. Each piece gets its own mutable array, like a buffer
/// filled by one socket read, because the decoder unmasks in place in the buffer it is given.
private func decode(
    _ pieces: [[UInt8]], role: WebSocketRole,
    maximumFramePayload: Int = WebSocketFrameDecoder.defaultMaximumFramePayload
) -> Run {
    let decoder = WebSocketFrameDecoder(role: role, maximumFramePayload: maximumFramePayload)
    var run = Run()
    feed(decoder, pieces, into: &run)
    return run
}

/// The body of `decode`, for tests that need to look at the decoder between reads.
private func feed(_ decoder: WebSocketFrameDecoder, _ pieces: [[UInt8]], into run: inout Run) {
    for piece in pieces {
        var storage = piece
        storage.withUnsafeMutableBytes { raw in
            var input = raw
            // Later pieces are still offered after an error or a close: a finished decoder must
            // leave them untouched, which `unconsumed` and `laterErrors` record.
            reading: while true {
                do throws(WebSocketProtocolError) {
                    guard let event = try decoder.next(&input) else { break reading }
                    switch event {
                    case .binary(let view, let isMessageEnd):
                        if view.count > 0 {
                            let start = view.baseAddress!, base = raw.baseAddress!
                            if start < base || start + view.count > base + raw.count { run.piecesOutsideInput += 1 }
                        }
                        run.events.append(.piece(Array(view), end: isMessageEnd))
                    case .ping(let view):
                        run.events.append(.ping(Array(view)))
                    case .pong(let view):
                        run.events.append(.pong(Array(view)))
                    case .close(let code, let reason):
                        run.events.append(.close(code, Array(reason)))
                    }
                } catch {
                    // A second error would mean the decoder kept going after failing, so it is
                    // counted apart instead of replacing the first.
                    if run.error == nil { run.error = error } else { run.laterErrors += 1 }
                    break reading
                }
            }
            run.unconsumed += input.count
        }
    }
    run.finished = decoder.isFinished
}

private func decode(
    _ stream: [UInt8], role: WebSocketRole, pieceLengths: [Int],
    maximumFramePayload: Int = WebSocketFrameDecoder.defaultMaximumFramePayload
) -> Run {
    decode(cut(stream, pieceLengths), role: role, maximumFramePayload: maximumFramePayload)
}

/// Joins consecutive binary pieces into whole messages, since how a message is split into pieces
/// depends on how the input was cut. A message still open at the end stays a piece with
/// `end: false`, so an unfinished message cannot pass for a finished one.
private func joinedMessages(_ events: [Seen]) -> [Seen] {
    var out: [Seen] = []
    var open: [UInt8]? = nil
    for event in events {
        if case .piece(let bytes, let end) = event {
            open = (open ?? []) + bytes
            if end {
                out.append(.message(open!))
                open = nil
            }
        } else {
            out.append(event)
        }
    }
    if let rest = open { out.append(.piece(rest, end: false)) }
    return out
}

/// The same run with its pieces joined into messages, for comparing runs over different cuts.
private func normalized(_ run: Run) -> Run {
    var copy = run
    copy.events = joinedMessages(run.events)
    return copy
}

// MARK: Reference helpers written independently of the library

private let rfcKey: [UInt8] = [0x37, 0xFA, 0x21, 0x3D]

/// Byte-by-byte RFC 6455 §5.3 masking, the definition the optimised `apply` must match.
private func referenceMask(_ data: [UInt8], key: [UInt8], offset: Int = 0) -> [UInt8] {
    var out = data
    for i in 0..<out.count { out[i] ^= key[(offset + i) % 4] }
    return out
}

/// A short (at most 125 bytes) frame as a client would send it, masked byte by byte. Used to
/// build masked streams without relying on the encoder under test.
private func maskedShortFrame(_ firstByte: UInt8, _ payload: [UInt8], key: [UInt8]) -> [UInt8] {
    precondition(payload.count <= 125)
    return [firstByte, 0x80 | UInt8(payload.count)] + key + referenceMask(payload, key: key)
}

/// A payload whose bytes differ from their neighbours and do not repeat with period 4, so that a
/// masking phase error or a shifted copy shows up.
private func pattern(_ count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8 &+ 7) }
}

private func utf8(_ s: String) -> [UInt8] { Array(s.utf8) }

// MARK: Error cases

/// One malformed stream and the exact error it must produce, with the events before it.
struct WebSocketFrameErrorCase: Sendable, CustomTestStringConvertible {
    var name: String
    var stream: String
    var server: Bool
    var reason: WebSocketProtocolError.Reason
    var offset: Int
    var closeCode: UInt16
    /// Text the description must contain, naming the specific problem.
    var mention: String
    var eventsBefore: [String] = []
    var maximumFramePayload = WebSocketFrameDecoder.defaultMaximumFramePayload

    var testDescription: String { name }
}

private let errorCases: [WebSocketFrameErrorCase] = [
    WebSocketFrameErrorCase(name: "RSV1 set", stream: "c2 00", server: false, reason: .reservedBitsSet(0x40),
              offset: 0, closeCode: 1002, mention: "RSV bits 0x40"),
    WebSocketFrameErrorCase(name: "RSV2 set", stream: "a2 00", server: false, reason: .reservedBitsSet(0x20),
              offset: 0, closeCode: 1002, mention: "RSV bits 0x20"),
    WebSocketFrameErrorCase(name: "RSV3 set", stream: "92 00", server: false, reason: .reservedBitsSet(0x10),
              offset: 0, closeCode: 1002, mention: "RSV bits 0x10"),
    WebSocketFrameErrorCase(name: "all RSV bits on a masked frame", stream: "f2 80 01 02 03 04", server: true,
              reason: .reservedBitsSet(0x70), offset: 0, closeCode: 1002, mention: "RSV bits 0x70"),
    WebSocketFrameErrorCase(name: "reserved data opcode 0x3", stream: "83 00", server: false, reason: .reservedOpcode(0x3),
              offset: 0, closeCode: 1002, mention: "opcode 0x3 is reserved"),
    WebSocketFrameErrorCase(name: "reserved control opcode 0xB", stream: "8b 00", server: false, reason: .reservedOpcode(0xB),
              offset: 0, closeCode: 1002, mention: "opcode 0xb is reserved"),
    WebSocketFrameErrorCase(name: "text frame (RFC 6455 §5.7 Hello)", stream: "81 05 48 65 6c 6c 6f", server: false,
              reason: .textFrame, offset: 0, closeCode: 1003, mention: "text"),
    WebSocketFrameErrorCase(name: "unmasked frame to the server role", stream: "82 05 48 65 6c 6c 6f", server: true,
              reason: .unmaskedClientFrame, offset: 0, closeCode: 1002, mention: "not masked"),
    WebSocketFrameErrorCase(name: "masked frame to the client role", stream: "82 85 37 fa 21 3d 7f 9f 4d 51 58", server: false,
              reason: .maskedServerFrame, offset: 0, closeCode: 1002, mention: "is masked"),
    WebSocketFrameErrorCase(name: "ping without FIN", stream: "09 00", server: false, reason: .fragmentedControlFrame(.ping),
              offset: 0, closeCode: 1002, mention: "ping frame is fragmented"),
    WebSocketFrameErrorCase(name: "ping with a 16-bit length of 126", stream: "89 7e 00 7e", server: false,
              reason: .controlFrameTooLong(.ping, 126), offset: 0, closeCode: 1002, mention: "126 payload bytes"),
    WebSocketFrameErrorCase(name: "close with a 64-bit length", stream: "88 ff 00 00 00 00 00 00 00 02 01 02 03 04", server: true,
              reason: .controlFrameTooLong(.close, 127), offset: 0, closeCode: 1002, mention: "close frame has 127"),
    WebSocketFrameErrorCase(name: "frame of 131,077 bytes (client role)", stream: "82 7f 00 00 00 00 00 02 00 05", server: false,
              reason: .frameTooLarge(131_077, limit: 131_076), offset: 0, closeCode: 1009, mention: "131077 payload bytes"),
    WebSocketFrameErrorCase(name: "frame of 131,077 bytes (server role)", stream: "82 ff 00 00 00 00 00 02 00 05 01 02 03 04",
              server: true, reason: .frameTooLarge(131_077, limit: 131_076), offset: 0, closeCode: 1009,
              mention: "limit of 131076 bytes"),
    WebSocketFrameErrorCase(name: "64-bit length with the top bit set", stream: "82 7f 80 00 00 00 00 00 00 00", server: false,
              reason: .frameTooLarge(0x8000_0000_0000_0000, limit: 131_076), offset: 0, closeCode: 1009,
              mention: "9223372036854775808"),
    WebSocketFrameErrorCase(name: "continuation without a message", stream: "80 02 6c 6f", server: false,
              reason: .continuationWithoutMessage, offset: 0, closeCode: 1002, mention: "continuation"),
    WebSocketFrameErrorCase(name: "continuation after a finished message", stream: "82 01 aa 80 01 bb", server: false,
              reason: .continuationWithoutMessage, offset: 3, closeCode: 1002, mention: "stream byte 3",
              eventsBefore: ["piece aa end"]),
    WebSocketFrameErrorCase(name: "binary frame inside a fragmented message", stream: "02 01 aa 89 00 82 01 bb", server: false,
              reason: .messageStartedInsideMessage, offset: 5, closeCode: 1002, mention: "new message",
              eventsBefore: ["piece aa", "ping"]),
    WebSocketFrameErrorCase(name: "close with a 1-byte payload", stream: "88 01 03", server: false, reason: .closePayloadOfOneByte,
              offset: 0, closeCode: 1002, mention: "1-byte payload"),
    WebSocketFrameErrorCase(name: "close code 1005", stream: "88 02 03 ed", server: false, reason: .invalidCloseCode(1005),
              offset: 0, closeCode: 1002, mention: "close code 1005"),
    WebSocketFrameErrorCase(name: "close code 999", stream: "88 02 03 e7", server: false, reason: .invalidCloseCode(999),
              offset: 0, closeCode: 1002, mention: "close code 999"),
    WebSocketFrameErrorCase(name: "close code 5000 (masked)", stream: "88 82 01 02 03 04 12 8a", server: true,
              reason: .invalidCloseCode(5000), offset: 0, closeCode: 1002, mention: "close code 5000"),
    WebSocketFrameErrorCase(name: "close reason with invalid UTF-8", stream: "82 00 88 04 03 e8 c3 28", server: false,
              reason: .closeReasonNotUTF8, offset: 2, closeCode: 1007, mention: "not valid UTF-8",
              eventsBefore: ["piece end"]),
    WebSocketFrameErrorCase(name: "close reason with a UTF-16 surrogate", stream: "88 05 03 e8 ed a0 80", server: false,
              reason: .closeReasonNotUTF8, offset: 0, closeCode: 1007, mention: "UTF-8"),
    WebSocketFrameErrorCase(name: "text frame after a valid frame and a ping", stream: "82 01 aa 89 00 81 00", server: false,
              reason: .textFrame, offset: 5, closeCode: 1003, mention: "stream byte 5",
              eventsBefore: ["piece aa end", "ping"]),
    WebSocketFrameErrorCase(name: "unmasked frame after a masked one", stream: "82 81 01 02 03 04 ab 82 00", server: true,
              reason: .unmaskedClientFrame, offset: 7, closeCode: 1002, mention: "stream byte 7",
              eventsBefore: ["piece aa end"]),
    WebSocketFrameErrorCase(name: "frame over a custom limit of 1000", stream: "82 01 aa 82 7e 03 e9", server: false,
              reason: .frameTooLarge(1001, limit: 1000), offset: 3, closeCode: 1009, mention: "1001 payload bytes",
              eventsBefore: ["piece aa end"], maximumFramePayload: 1000),
]

/// The events listed in a `WebSocketFrameErrorCase`, in the notation "piece aa end" / "ping".
private func expectedEvents(_ names: [String]) -> [Seen] {
    names.map { name in
        let words = name.split(separator: " ").map(String.init)
        switch words[0] {
        case "piece":
            let end = words.last == "end"
            let data = words.dropFirst().filter { $0 != "end" }.joined()
            return .piece(bytes(data), end: end)
        case "ping": return .ping([])
        default: preconditionFailure("unknown event name in test table")
        }
    }
}

// MARK: Tests

@Suite("WebSocket framing")
struct WebSocketFrameTests {

    // MARK: RFC 6455 §5.7 examples

    @Test("§5.7 unmasked text 'Hello' is refused with 1003 (client role)")
    func rfcTextHelloIsRefused() throws {
        let run = decode([bytes("81 05 48 65 6c 6c 6f")], role: .client)
        let error = try #require(run.error)
        #expect(error == WebSocketProtocolError(.textFrame, offset: 0))
        #expect(error.closeCode == 1003)
        #expect(error.description.contains("text"))
        #expect(run.events == [])
        #expect(run.finished)
    }

    @Test("§5.7 'Hello' as an unmasked binary frame (client role)")
    func rfcUnmaskedBinaryHello() {
        let run = decode([bytes("82 05 48 65 6c 6c 6f")], role: .client)
        #expect(run == Run(events: [.piece(utf8("Hello"), end: true)]))
    }

    @Test("§5.7 'Hello' as a masked binary frame (server role), unmasked in place")
    func rfcMaskedBinaryHello() throws {
        var frame = bytes("82 85 37 fa 21 3d 7f 9f 4d 51 58")
        let decoder = WebSocketFrameDecoder(role: .server)
        var viewStart = -1, viewCount = -1, end = false, left = -1
        try frame.withUnsafeMutableBytes { raw in
            var input = raw
            let event = try decoder.next(&input)
            if case .binary(let view, let isMessageEnd)? = event {
                viewStart = view.baseAddress! - raw.baseAddress!
                viewCount = view.count
                end = isMessageEnd
            }
            left = input.count
        }
        // The payload is unmasked where it lies: the view is the last five bytes of the input,
        // and the input array now holds the clear text after the untouched header.
        #expect(viewStart == 6)
        #expect(viewCount == 5)
        #expect(end)
        #expect(left == 0)
        #expect(frame == bytes("82 85 37 fa 21 3d 48 65 6c 6c 6f"))
    }

    @Test("§5.7 encoder: masked and unmasked 'Hello', ping and pong")
    func rfcEncoderVectors() {
        let key = WebSocketMaskingKey(0x37, 0xFA, 0x21, 0x3D)
        let hello = utf8("Hello")
        #expect(WebSocketFrameEncoder.frame(opcode: .binary, payload: hello, maskingKey: key)
            == bytes("82 85 37 fa 21 3d 7f 9f 4d 51 58"))
        #expect(WebSocketFrameEncoder.frame(opcode: .binary, payload: hello, maskingKey: nil)
            == bytes("82 05 48 65 6c 6c 6f"))
        #expect(WebSocketFrameEncoder.frame(opcode: .ping, payload: hello, maskingKey: nil)
            == bytes("89 05 48 65 6c 6c 6f"))
        #expect(WebSocketFrameEncoder.frame(opcode: .pong, payload: hello, maskingKey: key)
            == bytes("8a 85 37 fa 21 3d 7f 9f 4d 51 58"))
        #expect(WebSocketFrameEncoder.frame(opcode: .binary, fin: false, payload: utf8("Hel"), maskingKey: nil)
            == bytes("02 03 48 65 6c"))
        #expect(WebSocketFrameEncoder.frame(opcode: .continuation, payload: utf8("lo"), maskingKey: nil)
            == bytes("80 02 6c 6f"))
    }

    @Test("§5.7 fragmented 'Hel' + 'lo' (first opcode changed to binary)")
    func rfcFragmentedHello() {
        let stream = bytes("02 03 48 65 6c 80 02 6c 6f")
        let run = decode([stream], role: .client)
        #expect(run == Run(events: [.piece(utf8("Hel"), end: false), .piece(utf8("lo"), end: true)]))
        for lengths in splits(of: stream.count) {
            let cutRun = normalized(decode(stream, role: .client, pieceLengths: lengths))
            #expect(cutRun == Run(events: [.message(utf8("Hello"))]), "pieces \(lengths)")
        }
    }

    @Test("§5.7 unmasked ping (client role) and masked pong (server role)")
    func rfcPingAndPong() {
        #expect(decode([bytes("89 05 48 65 6c 6c 6f")], role: .client) == Run(events: [.ping(utf8("Hello"))]))
        #expect(decode([bytes("8a 85 37 fa 21 3d 7f 9f 4d 51 58")], role: .server) == Run(events: [.pong(utf8("Hello"))]))
    }

    @Test("§5.7 256-byte binary frame with a 16-bit length")
    func rfc256ByteFrame() {
        let payload = pattern(256)
        let frame = bytes("82 7e 01 00") + payload
        #expect(decode([frame], role: .client) == Run(events: [.piece(payload, end: true)]))
        #expect(WebSocketFrameEncoder.frame(opcode: .binary, payload: payload, maskingKey: nil) == frame)
    }

    @Test("§5.7 64 KiB binary frame with a 64-bit length")
    func rfc64KiBFrame() {
        let payload = pattern(65_536)
        let frame = bytes("82 7f 00 00 00 00 00 01 00 00") + payload
        #expect(decode([frame], role: .client) == Run(events: [.piece(payload, end: true)]))
        #expect(WebSocketFrameEncoder.frame(opcode: .binary, payload: payload, maskingKey: nil) == frame)
    }

    // MARK: Header length boundaries

    /// Header bytes for each boundary length: (unmasked header, masked header without the key).
    private static let boundaryHeaders: [Int: (plain: String, masked: String)] = [
        0: ("82 00", "82 80"),
        125: ("82 7d", "82 fd"),
        126: ("82 7e 00 7e", "82 fe 00 7e"),
        65_535: ("82 7e ff ff", "82 fe ff ff"),
        65_536: ("82 7f 00 00 00 00 00 01 00 00", "82 ff 00 00 00 00 00 01 00 00"),
        131_076: ("82 7f 00 00 00 00 00 02 00 04", "82 ff 00 00 00 00 00 02 00 04"),
    ]

    @Test("Length boundaries: exact headers, encode then decode in both roles",
          arguments: [0, 125, 126, 65_535, 65_536, 131_076])
    func lengthBoundaries(length: Int) throws {
        let headers = try #require(Self.boundaryHeaders[length])
        let payload = pattern(length)

        // A server sends unmasked frames, which the client role decodes.
        let plainHeader = bytes(headers.plain)
        let plain = WebSocketFrameEncoder.frame(opcode: .binary, payload: payload, maskingKey: nil)
        #expect(WebSocketFrameEncoder.headerLength(payloadLength: length, masked: false) == plainHeader.count)
        #expect(plain.count == plainHeader.count + length)
        #expect(Array(plain.prefix(plainHeader.count)) == plainHeader)
        #expect(Array(plain.dropFirst(plainHeader.count)) == payload)
        #expect(decode([plain], role: .client) == Run(events: [.piece(payload, end: true)]))

        // A client masks, and the server role unmasks.
        let maskedHeader = bytes(headers.masked) + rfcKey
        let masked = WebSocketFrameEncoder.frame(
            opcode: .binary, payload: payload, maskingKey: WebSocketMaskingKey(0x37FA_213D))
        #expect(WebSocketFrameEncoder.headerLength(payloadLength: length, masked: true) == maskedHeader.count)
        #expect(maskedHeader.count == plainHeader.count + 4)
        #expect(masked.count == maskedHeader.count + length)
        #expect(Array(masked.prefix(maskedHeader.count)) == maskedHeader)
        #expect(Array(masked.dropFirst(maskedHeader.count)) == referenceMask(payload, key: rfcKey))
        #expect(decode([masked], role: .server) == Run(events: [.piece(payload, end: true)]))
    }

    @Test("writeHeader writes exactly the header bytes in front of the payload")
    func writeHeaderInPlace() {
        var buffer = [UInt8](repeating: 0xEE, count: 20)
        let written = buffer.withUnsafeMutableBytes { raw in
            WebSocketFrameEncoder.writeHeader(
                opcode: .binary, fin: false, payloadLength: 300,
                maskingKey: WebSocketMaskingKey(0x01, 0x02, 0x03, 0x04), endingAt: raw.baseAddress! + 16)
        }
        #expect(written == 8)
        #expect(buffer == [UInt8](repeating: 0xEE, count: 8) + bytes("02 fe 01 2c 01 02 03 04 ee ee ee ee"))
        #expect(WebSocketFrameEncoder.maximumHeaderLength == 14)
    }

    // MARK: Drip-feed

    /// Frames the client role receives: a fragmented message with an empty middle fragment and
    /// a ping between fragments, an empty message, an empty pong, a one-frame message, a close,
    /// and a frame after the close that must stay unconsumed.
    private static let clientStream = bytes("""
        02 03 01 02 03 \
        89 02 70 31 \
        00 00 \
        80 02 04 05 \
        82 00 \
        8a 00 \
        82 05 aa bb cc dd ee \
        88 06 03 e8 62 79 65 21 \
        82 01 ff
        """)

    private static let streamEvents: [Seen] = [
        .ping(utf8("p1")),
        .message(bytes("01 02 03 04 05")),
        .message([]),
        .pong([]),
        .message(bytes("aa bb cc dd ee")),
        .close(1000, utf8("bye!")),
    ]

    @Test("Drip-feed, client role: every split into up to three pieces gives the same events")
    func dripFeedClient() {
        let stream = Self.clientStream
        #expect(stream.count == 37)
        let expected = Run(events: Self.streamEvents, unconsumed: 3, finished: true)
        var checked = 0
        for lengths in splits(of: stream.count, pairLimit: 80) {
            let run = decode(stream, role: .client, pieceLengths: lengths)
            #expect(run.piecesOutsideInput == 0, "pieces \(lengths)")
            #expect(normalized(run) == expected, "pieces \(lengths)")
            checked += 1
        }
        // All single cuts, all pairs of cuts, whole and byte by byte.
        #expect(checked == 1 + 36 + 35 * 36 / 2 + 1)
    }

    @Test("Drip-feed, server role: the same stream masked with varying keys")
    func dripFeedServer() {
        let k1: [UInt8] = [0x37, 0xFA, 0x21, 0x3D], k2: [UInt8] = [0x00, 0xFF, 0x80, 0x01]
        let k3: [UInt8] = [0xA5, 0x5A, 0xC3, 0x3C]
        let stream = maskedShortFrame(0x02, bytes("01 02 03"), key: k1)
            + maskedShortFrame(0x89, utf8("p1"), key: k2)
            + maskedShortFrame(0x00, [], key: k3)
            + maskedShortFrame(0x80, bytes("04 05"), key: k1)
            + maskedShortFrame(0x82, [], key: k2)
            + maskedShortFrame(0x8A, [], key: k3)
            + maskedShortFrame(0x82, bytes("aa bb cc dd ee"), key: k2)
            + maskedShortFrame(0x88, bytes("03 e8") + utf8("bye!"), key: k3)
            + maskedShortFrame(0x82, bytes("ff"), key: k1)
        #expect(stream.count == 73)
        let expected = Run(events: Self.streamEvents, unconsumed: 7, finished: true)
        for lengths in splits(of: stream.count, pairLimit: 80) {
            let run = decode(stream, role: .server, pieceLengths: lengths)
            #expect(run.piecesOutsideInput == 0, "pieces \(lengths)")
            #expect(normalized(run) == expected, "pieces \(lengths)")
        }
    }

    @Test("Drip-feed of big frames: cut points around every header, fixed piece sizes")
    func dripFeedBigFrames() {
        let small = pattern(256), big = pattern(65_536).reversed() as [UInt8]
        let stream = bytes("82 7e 01 00") + small
            + bytes("89 03 61 62 63")
            + bytes("82 7f 00 00 00 00 00 01 00 00") + big
            + bytes("88 00")
        let bigHeaderAt = 4 + 256 + 5
        let expected = Run(events: [.message(small), .ping(utf8("abc")), .message(big), .close(nil, [])],
                           unconsumed: 0, finished: true)

        // Every cut inside and next to the headers, some cuts in the middle of the big payload,
        // and the cuts just before the close frame's two bytes.
        var cuts = Array(1..<(bigHeaderAt + 16))
        cuts += stride(from: bigHeaderAt + 16, to: stream.count - 8, by: 4_099)
        cuts += Array((stream.count - 8)..<stream.count)
        for cut in cuts {
            let run = decode(stream, role: .client, pieceLengths: [cut, stream.count - cut])
            #expect(normalized(run) == expected, "cut at \(cut)")
        }
        for size in [1, 2, 3, 7, 125, 4_096, 65_535] {
            var lengths = Array(repeating: size, count: stream.count / size)
            if stream.count % size != 0 { lengths.append(stream.count % size) }
            let run = decode(stream, role: .client, pieceLengths: lengths)
            #expect(run.piecesOutsideInput == 0, "pieces of \(size)")
            #expect(normalized(run) == expected, "pieces of \(size)")
        }
    }

    // MARK: Errors

    @Test("Protocol errors: exact reason, close code, offset and description", arguments: errorCases)
    func protocolErrors(_ c: WebSocketFrameErrorCase) throws {
        let stream = bytes(c.stream)
        let expected = WebSocketProtocolError(c.reason, offset: UInt64(c.offset))
        let role: WebSocketRole = c.server ? .server : .client
        let whole = decode([stream], role: role, maximumFramePayload: c.maximumFramePayload)
        let error = try #require(whole.error)
        #expect(error == expected)
        #expect(error.closeCode == c.closeCode)
        #expect(error.description.contains(c.mention), "\(error.description)")
        #expect(error.description.contains("stream byte \(c.offset)"), "\(error.description)")
        #expect(whole.events == expectedEvents(c.eventsBefore))
        #expect(whole.finished)
        // Byte by byte the error must be the same and be found at the same frame.
        let dripped = decode(stream, role: role, pieceLengths: Array(repeating: 1, count: stream.count),
                             maximumFramePayload: c.maximumFramePayload)
        #expect(dripped.error == expected)
        #expect(joinedMessages(dripped.events) == joinedMessages(whole.events))
        #expect(dripped.finished)
    }

    @Test("A too-large frame is refused when its header is complete, before any payload")
    func frameTooLargeBeforePayload() {
        let tooLarge = WebSocketProtocolError(.frameTooLarge(131_077, limit: 131_076), offset: 0)

        // Client role: 9 of the 10 header bytes are not enough to decide; the 10th is.
        let client = WebSocketFrameDecoder(role: .client)
        var run = Run()
        feed(client, [bytes("82 7f 00 00 00 00 00 02 00")], into: &run)
        #expect(run == Run())
        #expect(client.streamOffset == 9)
        #expect(!client.isFinished)
        feed(client, [bytes("05")], into: &run)
        #expect(run.error == tooLarge)
        #expect(client.streamOffset == 10)
        #expect(client.isFinished)

        // Server role: the header ends after the masking key, 14 bytes in. Payload bytes sent
        // along with the last header byte stay unconsumed.
        let server = WebSocketFrameDecoder(role: .server)
        run = Run()
        feed(server, [bytes("82 ff 00 00 00 00 00 02 00 05 01 02 03")], into: &run)
        #expect(run == Run())
        #expect(!server.isFinished)
        feed(server, [bytes("04 aa bb cc")], into: &run)
        #expect(run.error == tooLarge)
        #expect(run.unconsumed == 3)
        #expect(server.streamOffset == 14)
    }

    @Test("A custom maximumFramePayload of 1000 is enforced and the limit itself accepted")
    func customFrameLimit() {
        let atLimit = pattern(1_000)
        #expect(WebSocketFrameDecoder(role: .client, maximumFramePayload: 1_000).maximumFramePayload == 1_000)
        #expect(WebSocketFrameDecoder(role: .client).maximumFramePayload == 131_076)
        let ok = decode([bytes("82 7e 03 e8") + atLimit], role: .client, maximumFramePayload: 1_000)
        #expect(ok == Run(events: [.piece(atLimit, end: true)]))

        let over16 = decode([bytes("82 7e 03 e9") + pattern(1_001)], role: .client, maximumFramePayload: 1_000)
        #expect(over16.error == WebSocketProtocolError(.frameTooLarge(1_001, limit: 1_000), offset: 0))
        #expect(over16.error?.closeCode == 1009)
        #expect(over16.error?.description.contains("limit of 1000 bytes") == true)
        // The payload was never touched: only the 4 header bytes were consumed.
        #expect(over16.unconsumed == 1_001)

        let over64 = decode([bytes("82 ff 00 00 00 00 00 01 00 00 01 02 03 04")], role: .server, maximumFramePayload: 1_000)
        #expect(over64.error == WebSocketProtocolError(.frameTooLarge(65_536, limit: 1_000), offset: 0))
    }

    @Test("Close codes allowed on the wire are accepted, the others refused")
    func closeCodes() {
        for code: UInt16 in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000, 4999] {
            let frame: [UInt8] = [0x88, 0x02, UInt8(code >> 8), UInt8(code & 0xFF)]
            #expect(decode([frame], role: .client) == Run(events: [.close(code, [])], finished: true), "code \(code)")
        }
        for code: UInt16 in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65_535] {
            let frame: [UInt8] = [0x88, 0x02, UInt8(code >> 8), UInt8(code & 0xFF)]
            let run = decode([frame], role: .client)
            #expect(run.error == WebSocketProtocolError(.invalidCloseCode(code), offset: 0), "code \(code)")
            #expect(run.error?.description.contains("close code \(code)") == true, "code \(code)")
        }
    }

    // MARK: Close

    @Test("After a close frame the decoder is finished and leaves the rest of the input")
    func closeFinishesDecoding() {
        let decoder = WebSocketFrameDecoder(role: .client)
        var run = Run()
        feed(decoder, [bytes("88 05 03 e8 62 79 65 82 01 aa")], into: &run)
        #expect(run == Run(events: [.close(1000, utf8("bye"))], unconsumed: 3, finished: true))
        #expect(decoder.isFinished)
        #expect(decoder.streamOffset == 7)
        // Later reads are not decoded at all.
        feed(decoder, [bytes("82 01 bb")], into: &run)
        #expect(run == Run(events: [.close(1000, utf8("bye"))], unconsumed: 6, finished: true))
        #expect(decoder.streamOffset == 7)

        // A close without a payload has no code; a masked close is unmasked (server role).
        #expect(decode([bytes("88 00")], role: .client) == Run(events: [.close(nil, [])], finished: true))
        let masked = maskedShortFrame(0x88, bytes("03 e9") + utf8("é"), key: rfcKey)
        #expect(decode([masked], role: .server) == Run(events: [.close(1001, utf8("é"))], finished: true))
    }

    @Test("closeFrame: exact code and reason bytes, masked and unmasked")
    func closeFrameBytes() {
        #expect(WebSocketFrameEncoder.closeFrame(code: 1000, reason: "bye", maskingKey: nil)
            == bytes("88 05 03 e8 62 79 65"))
        #expect(WebSocketFrameEncoder.closeFrame(code: 1000, reason: "bye", maskingKey: WebSocketMaskingKey(0x37FA_213D))
            == bytes("88 85 37 fa 21 3d 34 12 43 44 52"))
        #expect(WebSocketFrameEncoder.closeFrame(code: 1011, reason: "", maskingKey: nil) == bytes("88 02 03 f3"))
    }

    @Test("closeFrame truncates a long reason to 125 payload bytes on a character boundary",
          arguments: [("é", 2, 61), ("€", 3, 41), ("😀", 4, 30), ("a", 1, 123)])
    func closeFrameTruncation(_ c: (character: String, width: Int, fits: Int)) throws {
        let (character, width, fits) = c
        let reason = String(repeating: character, count: 200)
        let frame = WebSocketFrameEncoder.closeFrame(code: 1001, reason: reason, maskingKey: nil)
        let payloadLength = 2 + width * fits
        #expect(frame.count == 2 + payloadLength)
        #expect(Array(frame.prefix(4)) == [0x88, UInt8(payloadLength), 0x03, 0xE9])
        #expect(Array(frame.dropFirst(4)) == utf8(String(repeating: character, count: fits)))
        // The truncated frame must still be one our own decoder accepts (valid UTF-8).
        let run = decode([frame], role: .client)
        #expect(run == Run(events: [.close(1001, utf8(String(repeating: character, count: fits)))], finished: true))
    }

    // MARK: Masking

    @Test("apply equals byte-by-byte XOR for offsets 0...7 and lengths 0...40, and undoes itself")
    func maskingMatchesReference() {
        let keys: [[UInt8]] = [rfcKey, [0x01, 0x02, 0x04, 0x08], [0xFF, 0x00, 0xFF, 0x00]]
        var mismatches: [String] = []
        for key in keys {
            let maskingKey = WebSocketMaskingKey(key[0], key[1], key[2], key[3])
            for offset in 0...7 {
                for length in 0...40 {
                    let data = pattern(length)
                    // Guard bytes on both sides catch writes outside the range, and starting one
                    // byte into the array makes the 8-byte word accesses unaligned.
                    var buffer = [0xC7] + data + [0xC7, 0xC7]
                    buffer.withUnsafeMutableBytes { raw in
                        maskingKey.apply(to: UnsafeMutableRawBufferPointer(rebasing: raw[1..<(1 + length)]), offset: offset)
                    }
                    let expected = [0xC7] + referenceMask(data, key: key, offset: offset) + [0xC7, 0xC7]
                    if buffer != expected { mismatches.append("key \(hex(key)) offset \(offset) length \(length)") }
                    buffer.withUnsafeMutableBytes { raw in
                        maskingKey.apply(to: UnsafeMutableRawBufferPointer(rebasing: raw[1..<(1 + length)]), offset: offset)
                    }
                    if buffer != [0xC7] + data + [0xC7, 0xC7] {
                        mismatches.append("twice: key \(hex(key)) offset \(offset) length \(length)")
                    }
                }
            }
        }
        #expect(mismatches == [])
    }

    @Test("A masking key from 32 bits takes the most significant byte first")
    func maskingKeyFromBits() {
        #expect(WebSocketMaskingKey(0x37FA_213D) == WebSocketMaskingKey(0x37, 0xFA, 0x21, 0x3D))
        let key = WebSocketMaskingKey(0x0102_0304)
        #expect([key.b0, key.b1, key.b2, key.b3] == [1, 2, 3, 4])
    }
}
