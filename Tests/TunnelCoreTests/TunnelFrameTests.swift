import Testing
@testable import TunnelCore

/// Feeds `pieces` to a fresh decoder and returns every message's bytes, copied.
func deframe(_ pieces: [[UInt8]], decoder: TunnelFrameDecoder = TunnelFrameDecoder()) -> [[UInt8]] {
    var out: [[UInt8]] = []
    for piece in pieces {
        piece.withUnsafeBytes { view in
            var input = view
            while let message = decoder.next(&input) { out.append(Array(message)) }
            #expect(input.isEmpty, "decoder must consume every byte it is given")
        }
    }
    return out
}

@Suite("Tunnel framing (2-byte length prefix)")
struct TunnelFrameTests {
    static let messages: [[UInt8]] = [
        bytes("08 02 10 01 2A 03 53 53 48 38 01"),
        bytes("08 01 10 01 22 02 68 69 2A 03 53 53 48 38 01"),
        [],
        bytes("08 05"),
        bytes("08 07 10 01 2A 03 53 53 48 38 02"),
    ]

    static var stream: [UInt8] {
        var s: [UInt8] = []
        for m in messages { s += [UInt8(m.count >> 8), UInt8(m.count & 0xFF)] + m }
        return s
    }

    @Test func wholeStreamInOneChunk() {
        #expect(deframe([Self.stream]) == Self.messages)
    }

    @Test func everySplitGivesTheSameMessages() {
        let stream = Self.stream
        for lengths in splits(of: stream.count) {
            #expect(deframe(cut(stream, lengths)) == Self.messages, "split \(lengths)")
        }
    }

    @Test func streamStartAndDataInOneWebSocketFrame() {
        // docs/PROTOCOL.md §16.9: both messages must come out of one read, nothing left waiting.
        let chunk = bytes("00 0B 08 02 10 01 2A 03 53 53 48 38 01 00 0F 08 01 10 01 22 02 68 69 2A 03 53 53 48 38 01")
        #expect(deframe([chunk]) == Array(Self.messages[0...1]))
    }

    @Test func completeMessagesAreViewsIntoTheInput() {
        let decoder = TunnelFrameDecoder()
        let chunk = Self.stream
        chunk.withUnsafeBytes { view in
            var input = view
            let first = decoder.next(&input)
            #expect(first?.baseAddress == view.baseAddress! + 2)
            #expect(decoder.bufferedByteCount == 0)
        }
    }

    @Test func straddlingMessageIsHeldThenCompleted() {
        let decoder = TunnelFrameDecoder()
        let stream = Self.stream
        #expect(deframe([Array(stream[0..<7])], decoder: decoder).isEmpty)
        #expect(decoder.bufferedByteCount == 7)
        #expect(deframe([Array(stream[7...])], decoder: decoder) == Self.messages)
        #expect(decoder.bufferedByteCount == 0)
    }

    @Test func largestMessageAcrossManyChunks() {
        let body = (0..<TunnelFrame.maximumMessageLength).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let stream = [0xFF, 0xFF] + body + [0x00, 0x02, 0x08, 0x04]
        for size in [1, 2, 3, 1000, 4096, 65_536, 65_537, 65_538] {
            var pieces: [[UInt8]] = []
            var at = 0
            while at < stream.count {
                pieces.append(Array(stream[at..<min(stream.count, at + size)]))
                at += size
            }
            #expect(deframe(pieces) == [body, bytes("08 04")], "pieces of \(size)")
        }
    }

    @Test func resetDropsAPartialMessage() {
        let decoder = TunnelFrameDecoder()
        _ = deframe([bytes("00 05 08 01")], decoder: decoder)
        decoder.reset()
        #expect(deframe([bytes("00 02 08 04")], decoder: decoder) == [bytes("08 04")])
    }

    @Test func frameInPlaceMatchesTheCopyingEncoder() throws {
        let payload = (0..<1000).map { UInt8(truncatingIfNeeded: $0) }
        let message = TunnelMessage(type: .data, streamId: 7, serviceId: Array("SSH".utf8), connectionId: 3)
        let expected = try payload.withUnsafeBytes { view in
            var m = message
            m.payload = view
            return try TunnelFrame.encode(m)
        }
        let head = TunnelFrame.headLength(message, payloadLength: payload.count)
        var buffer = [UInt8](repeating: 0xEE, count: 64 + payload.count + message.tailLength)
        let written = try buffer.withUnsafeMutableBytes { raw in
            let start = raw.baseAddress! + 64
            start.copyMemory(from: payload, byteCount: payload.count)
            return try TunnelFrame.frameInPlace(message, payload: start, payloadLength: payload.count)
        }
        #expect(written == head)
        #expect(Array(buffer[(64 - head)...]) == expected)
    }

    @Test func frameInPlaceRefusesAnOversizedPayload() {
        var buffer = [UInt8](repeating: 0, count: 70_000)
        let message = TunnelMessage(type: .data, streamId: 1)
        buffer.withUnsafeMutableBytes { raw in
            #expect(throws: TunnelEncodingError.payloadTooLarge(64_513)) {
                try TunnelFrame.frameInPlace(message, payload: raw.baseAddress! + 100, payloadLength: 64_513)
            }
        }
    }
}
