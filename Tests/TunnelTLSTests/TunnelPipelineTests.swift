import Foundation
import Testing
import TunnelCore
@testable import TunnelTLS

/// Records what a pipeline hands over, and plays a minimal HTTP upgrade: it takes bytes up to
/// the blank line ending the head, then starts frames (or discards the rest).
final class PipelineRecorder: TunnelPipelineHandler {
    enum Event: Equatable {
        case handshakeDone
        case message([UInt8])
        case messageEnded
        case pong([UInt8])
        case close(UInt16?, String)
        case protocolError(WebSocketProtocolError.Reason)
    }

    var events: [Event] = []
    var head: [UInt8] = []
    var paused = false
    var discardAfterHead = false
    /// Runs after each message is recorded (to pause, queue frames, finish...).
    var afterMessage: ((PipelineRecorder) -> Void)? = nil
    var pipeline: TunnelPipeline! = nil

    var messages: [[UInt8]] {
        events.compactMap { if case .message(let bytes) = $0 { return bytes } else { return nil } }
    }

    func pipelineHandshakeDone() { events.append(.handshakeDone) }

    func pipelineUpgradeBytes(_ bytes: UnsafeRawBufferPointer) -> Int {
        var used = 0
        for byte in bytes {
            head.append(byte)
            used += 1
            if head.count >= 4 && Array(head.suffix(4)) == [13, 10, 13, 10] {
                if discardAfterHead { pipeline.discardInput() } else { pipeline.startFrames() }
                break
            }
        }
        return used
    }

    func pipelineMessage(_ bytes: UnsafeRawBufferPointer) {
        events.append(.message(Array(bytes)))
        afterMessage?(self)
    }

    func pipelineMessageEnded() { events.append(.messageEnded) }
    func pipelinePong(_ payload: UnsafeRawBufferPointer) { events.append(.pong(Array(payload))) }
    func pipelineCloseFrame(code: UInt16?, reason: UnsafeRawBufferPointer) {
        events.append(.close(code, String(decoding: reason, as: UTF8.self)))
    }
    func pipelineProtocolError(_ error: WebSocketProtocolError) { events.append(.protocolError(error.reason)) }
    var pipelinePaused: Bool { paused }
}

/// One end of a pipeline pair under test.
struct PipelineEnd {
    let pipeline: TunnelPipeline
    let recorder: PipelineRecorder

    func pump() throws { try pipeline.pump(recorder) }
}

/// Moves up to `limit` bytes of ciphertext from one end to the other (whatever fits).
@discardableResult
func moveCiphertext(from: PipelineEnd, to: PipelineEnd, limit: Int = .max) -> Int {
    let source = from.pipeline.tls.ciphertextOut
    let sink = to.pipeline.tls.ciphertextIn
    var moved = 0
    while source.readableCount > 0 && sink.writableCount > 0 && moved < limit {
        let span = source.readableSpans.0
        let n = min(span.count, sink.writableCount, limit - moved)
        _ = sink.write(UnsafeRawBufferPointer(rebasing: span[0..<n]))
        source.consume(n)
        moved += n
    }
    return moved
}

/// Flushes, moves and pumps both ends until nothing moves.
func exchange(_ a: PipelineEnd, _ b: PipelineEnd) throws {
    for _ in 0..<10_000 {
        try a.pipeline.flushControl()
        try b.pipeline.flushControl()
        let moved = moveCiphertext(from: a, to: b) + moveCiphertext(from: b, to: a)
        try a.pump()
        try b.pump()
        if moved == 0 && a.pipeline.tls.ciphertextOut.readableCount == 0 && b.pipeline.tls.ciphertextOut.readableCount == 0 {
            return
        }
    }
    Issue.record("the pipelines never went quiet")
}

/// The tunnel-frame stream of `messages`: each with its 2-byte big-endian length.
func tunnelStream(_ messages: [[UInt8]]) -> [UInt8] {
    var out: [UInt8] = []
    for m in messages {
        out += [UInt8(m.count >> 8), UInt8(m.count & 0xFF)] + m
    }
    return out
}

func frame(_ opcode: WebSocketOpcode, _ payload: [UInt8], fin: Bool = true, mask: WebSocketMaskingKey? = nil) -> [UInt8] {
    payload.withUnsafeBytes { WebSocketFrameEncoder.frame(opcode: opcode, fin: fin, payload: $0, maskingKey: mask) }
}

/// Writes raw plaintext through an end's TLS session (records end where the writes end).
func writePlaintext(_ end: PipelineEnd, _ bytes: [UInt8]) throws {
    let taken = try bytes.withUnsafeBytes { try end.pipeline.tls.write($0) }
    #expect(taken == bytes.count)
}

@Suite("The TLS → WebSocket → tunnel-frame pipeline", .serialized)
final class TunnelPipelineTests {
    let certs: TestCertificates
    let random: SecureRandom
    let mask = WebSocketMaskingKey(0x11, 0x22, 0x33, 0x44)

    init() throws {
        certs = try TestCertificates.make()
        random = try SecureRandom()
    }

    deinit { certs.remove() }

    func makeEnd(_ role: WebSocketRole, trust: [String]? = nil, plaintext: Int = 64 * 1024) throws -> PipelineEnd {
        let engine: TLSEngine
        if role == .server {
            let config = try TLSConfiguration.server(certificateFile: certs.serverCertificate, keyFile: certs.serverKey, random: random)
            engine = try TLSEngine(configuration: config, serverName: nil)
        } else {
            let config = try TLSConfiguration.client(trustPaths: trust ?? [certs.caCertificate], verify: true, random: random)
            engine = try TLSEngine(configuration: config, serverName: "localhost")
        }
        let pipeline = try TunnelPipeline(role: role, tls: engine, random: role == .client ? random : nil,
                                          plaintextCapacity: plaintext)
        let recorder = PipelineRecorder()
        recorder.pipeline = pipeline
        return PipelineEnd(pipeline: pipeline, recorder: recorder)
    }

    /// A client and a server past TLS and the upgrade, both reading frames.
    func openPair(serverPlaintext: Int = 64 * 1024) throws -> (client: PipelineEnd, server: PipelineEnd) {
        let client = try makeEnd(.client)
        let server = try makeEnd(.server, plaintext: serverPlaintext)
        try exchange(client, server)
        #expect(client.recorder.events == [.handshakeDone] && server.recorder.events == [.handshakeDone])
        client.pipeline.queueRaw(Array("GET /tunnel HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8))
        try exchange(client, server)
        #expect(server.pipeline.phase == .frames)
        server.pipeline.queueRaw(Array("HTTP/1.1 101 Switching Protocols\r\n\r\n".utf8))
        try exchange(client, server)
        #expect(client.pipeline.phase == .frames)
        client.recorder.events.removeAll()
        server.recorder.events.removeAll()
        return (client, server)
    }

    @Test func messagesInOneFrameArriveWholeAndInOrder() throws {
        let (client, server) = try openPair()
        let messages: [[UInt8]] = [[1, 2, 3], [], Array(repeating: 0xAB, count: 300), [9]]
        #expect(try frame(.binary, tunnelStream(messages)).withUnsafeBytes { try server.pipeline.writeFrame($0) })
        try exchange(client, server)
        #expect(client.recorder.events == messages.map { .message($0) } + [.messageEnded])
    }

    @Test func upgradeHeadAndFirstFramesInOneRecord() throws {
        let client = try makeEnd(.client)
        let server = try makeEnd(.server)
        try exchange(client, server)
        let message: [UInt8] = Array("SERVICE_IDS".utf8)
        try writePlaintext(server, Array("HTTP/1.1 101 Switching Protocols\r\nX: y\r\n\r\n".utf8) + frame(.binary, tunnelStream([message])))
        try exchange(client, server)
        #expect(client.recorder.head == Array("HTTP/1.1 101 Switching Protocols\r\nX: y\r\n\r\n".utf8))
        #expect(client.recorder.events == [.handshakeDone, .message(message), .messageEnded])
    }

    /// Plaintext cut into two TLS records at every position: the WebSocket header, the tunnel
    /// prefix and the message bodies are each split somewhere.
    @Test func everySplitOfThePlaintextAcrossRecords() throws {
        let (client, server) = try openPair()
        let messages: [[UInt8]] = [[0x0A, 0x01, 0x02], Array(0..<200).map { UInt8($0) }, [0x42]]
        let bytes = frame(.binary, Array(tunnelStream(messages)[0..<100]), fin: false)
            + frame(.ping, [7, 7])
            + frame(.continuation, Array(tunnelStream(messages)[100...]))
        for cut in 0...bytes.count {
            client.recorder.events.removeAll()
            try writePlaintext(server, Array(bytes[0..<cut]))
            try exchange(client, server)
            try writePlaintext(server, Array(bytes[cut...]))
            try exchange(client, server)
            #expect(client.recorder.messages == messages, "cut at \(cut)")
            #expect(client.recorder.events.last == .messageEnded, "cut at \(cut)")
            #expect(client.pipeline.bufferedPlaintext == 0)
        }
        // Every ping was answered: the server saw one pong per round (each round's pong was
        // written before the next ping came).
        let pongs = server.recorder.events.filter { $0 == .pong([7, 7]) }.count
        #expect(pongs == bytes.count + 1)
    }

    /// The same records, with the ciphertext handed over in two reads cut at every position.
    @Test func everySplitOfTheCiphertext() throws {
        let (client, server) = try openPair()
        let messages: [[UInt8]] = [Array(repeating: 5, count: 40), [1], Array(repeating: 6, count: 10)]
        let bytes = frame(.binary, tunnelStream(messages))
        var length = 0
        for cut in 0..<512 {
            client.recorder.events.removeAll()
            #expect(try bytes.withUnsafeBytes { try server.pipeline.writeFrame($0) })
            length = server.pipeline.tls.ciphertextOut.readableCount
            if cut > length { break }
            moveCiphertext(from: server, to: client, limit: cut)
            try client.pump()
            moveCiphertext(from: server, to: client)
            try client.pump()
            #expect(client.recorder.events == messages.map { .message($0) } + [.messageEnded], "cut at \(cut) of \(length)")
        }
        #expect(length > 0 && length < 512)
    }

    /// Messages of every size class, some wrapping around the plaintext ring, others spanning
    /// frames; the receiver's ring (16 KiB here) is smaller than one message.
    @Test func largeMessagesThroughASmallRing() throws {
        let (client, server) = try openPair(serverPlaintext: 16 * 1024)
        var messages: [[UInt8]] = []
        var seed: UInt32 = 12345
        for size in [65_535, 1, 0, 16_384, 16_383, 16_385, 65_534, 70, 40_000] {
            messages.append((0..<size).map { _ in
                seed = seed &* 1_103_515_245 &+ 12_345
                return UInt8(truncatingIfNeeded: seed >> 16)
            })
        }
        let stream = tunnelStream(messages)
        // Frames of 10,000 bytes: most messages span several frames, some frames hold several.
        var offset = 0
        while offset < stream.count {
            let end = min(offset + 10_000, stream.count)
            let piece = Array(stream[offset..<end])
            let bytes = frame(offset == 0 ? .binary : .continuation, piece, fin: end == stream.count, mask: client.pipeline.nextMaskingKey())
            var attempts = 0
            while !(try bytes.withUnsafeBytes { try client.pipeline.writeFrame($0) }) {
                attempts += 1
                try #require(attempts < 100, "the frame never fitted")
                try exchange(client, server)
            }
            offset = end
        }
        try exchange(client, server)
        // Compared by sizes, then whole (a Bool, so that a failure does not print megabytes).
        #expect(server.recorder.messages.map(\.count) == messages.map(\.count))
        let identical = server.recorder.messages == messages
        #expect(identical, "message bytes differ")
        #expect(server.recorder.events.filter { $0 == .messageEnded }.count == 1)
    }

    /// While the handler is paused nothing is delivered, the buffers stop filling at their
    /// capacities, and everything arrives in order after it resumes.
    @Test func pausedHandlerHoldsBoundedBytes() throws {
        let (client, server) = try openPair()
        let messages: [[UInt8]] = (0..<40).map { i in Array(repeating: UInt8(i), count: 30_000) }
        client.recorder.afterMessage = { $0.paused = true }
        var next = 0
        var rounds = 0
        while client.recorder.messages.count < messages.count {
            rounds += 1
            #expect(rounds < 10_000)
            if rounds >= 10_000 { break }
            if next < messages.count,
               try frame(.binary, tunnelStream([messages[next]])).withUnsafeBytes({ try server.pipeline.writeFrame($0) }) {
                next += 1
            }
            moveCiphertext(from: server, to: client)
            let outcome = try client.pipeline.pump(client.recorder)
            #expect(client.pipeline.bufferedPlaintext <= 64 * 1024 + 65_537)
            #expect(client.pipeline.tls.ciphertextIn.readableCount <= client.pipeline.tls.ciphertextIn.capacity)
            if outcome == .paused {
                // Held: one more pump delivers nothing while paused.
                let before = client.recorder.messages.count
                #expect(try client.pipeline.pump(client.recorder) == .paused)
                #expect(client.recorder.messages.count == before)
                client.recorder.paused = false
            }
        }
        #expect(client.recorder.messages.map(\.count) == messages.map(\.count))
        let identical = client.recorder.messages == messages
        #expect(identical, "message bytes differ")
    }

    /// Pings arriving faster than pongs can be sent leave one pong, with the latest payload.
    @Test func pongsCoalesce() throws {
        let (client, server) = try openPair()
        for i in 0..<100 {
            try writePlaintext(client, frame(.ping, Array("ping \(i)".utf8), mask: mask))
        }
        moveCiphertext(from: client, to: server)
        try server.pump()
        #expect(server.pipeline.queuedControlCount == 1)
        try exchange(client, server)
        #expect(client.recorder.events == [.pong(Array("ping 99".utf8))])
    }

    @Test func noPongAfterTheCloseFrame() throws {
        let (client, server) = try openPair()
        server.pipeline.queueClose(code: 1000, reason: "bye")
        #expect(!server.pipeline.canWriteFrame(10))
        try writePlaintext(client, frame(.ping, [1], mask: mask))
        try exchange(client, server)
        #expect(client.recorder.events == [.close(1000, "bye")])
        #expect(server.pipeline.closeWritten)
        #expect(server.recorder.events.isEmpty)
    }

    @Test func nothingIsDecodedAfterAClose() throws {
        let (client, server) = try openPair()
        client.pipeline.queueClose(code: 1001, reason: "going")
        try client.pipeline.flushControl()
        try writePlaintext(client, frame(.binary, tunnelStream([[1, 2]]), mask: mask))
        try exchange(client, server)
        #expect(server.recorder.events == [.close(1001, "going")])
        #expect(server.pipeline.bufferedPlaintext == 0)
    }

    @Test func emptyCloseFrame() throws {
        let (client, server) = try openPair()
        server.pipeline.queueClose(code: nil, reason: "")
        try exchange(client, server)
        #expect(client.recorder.events == [.close(nil, "")])
    }

    @Test func maskedFrameFromTheServerIsAProtocolError() throws {
        let (client, server) = try openPair()
        try writePlaintext(server, frame(.binary, tunnelStream([[1]]), mask: mask) + frame(.binary, tunnelStream([[2]])))
        try exchange(client, server)
        #expect(client.recorder.events == [.protocolError(.maskedServerFrame)])
    }

    @Test func unmaskedFrameFromTheClientIsAProtocolError() throws {
        let (client, server) = try openPair()
        try writePlaintext(client, frame(.binary, tunnelStream([[1]])))
        try exchange(client, server)
        #expect(server.recorder.events == [.protocolError(.unmaskedClientFrame)])
    }

    @Test func clientFramesAreMaskedOnTheWire() throws {
        let (client, server) = try openPair()
        client.pipeline.queueFrame(.binary, payload: UnsafeRawBufferPointer(start: nil, count: 0))
        try exchange(client, server)
        // Accepted by the server's decoder, which refuses unmasked client frames.
        #expect(server.recorder.events == [.messageEnded])
    }

    /// Control frames go first: a data frame waits while any is queued, and none follows a close.
    @Test func controlFramesKeepTheirPlaceAheadOfData() throws {
        let (client, server) = try openPair()
        let data = frame(.binary, tunnelStream([[0xD]]))
        let control: [UInt8] = [0, 1, 0xC]
        control.withUnsafeBytes { server.pipeline.queueFrame(.binary, payload: $0) }
        #expect(!server.pipeline.canWriteFrame(data.count))
        #expect(try data.withUnsafeBytes { try server.pipeline.writeFrame($0) } == false)
        try server.pipeline.flushControl()
        #expect(try data.withUnsafeBytes { try server.pipeline.writeFrame($0) })
        try exchange(client, server)
        #expect(client.recorder.messages == [[0xC], [0xD]])
    }

    /// A handler that refuses the upgrade mid-read makes the rest of the input disappear,
    /// including what came in the same record; nothing is consumed twice.
    @Test func discardingDuringTheUpgrade() throws {
        let client = try makeEnd(.client)
        let server = try makeEnd(.server)
        server.recorder.discardAfterHead = true
        try exchange(client, server)
        try writePlaintext(client, Array("GET / HTTP/1.1\r\n\r\n".utf8) + frame(.binary, tunnelStream([[1]]), mask: mask))
        try exchange(client, server)
        #expect(server.pipeline.phase == .discarding)
        #expect(server.pipeline.bufferedPlaintext == 0)
        try writePlaintext(client, frame(.binary, tunnelStream([[2]]), mask: mask))
        try exchange(client, server)
        #expect(server.recorder.events == [.handshakeDone])
    }

    @Test func finishStopsEverything() throws {
        let (client, server) = try openPair()
        client.recorder.afterMessage = { $0.pipeline.finish() }
        try writePlaintext(server, frame(.binary, tunnelStream([[1], [2], [3]])))
        try exchange(client, server)
        #expect(client.recorder.events == [.message([1])])
        client.pipeline.queueFrame(.ping, payload: UnsafeRawBufferPointer(start: nil, count: 0))
        #expect(client.pipeline.queuedControlCount == 0)
    }

    @Test func closeNotifyAfterTheLastMessage() throws {
        let (client, server) = try openPair()
        try writePlaintext(server, frame(.binary, tunnelStream([[4]])))
        server.pipeline.tls.close()
        try exchange(client, server)
        #expect(client.recorder.messages == [[4]])
        #expect(client.pipeline.peerEndedTLS)
    }

    @Test func handshakeFailureIsReportedAsSuch() throws {
        let client = try makeEnd(.client, trust: [certs.otherCA])
        let server = try makeEnd(.server)
        let failure = try #require(throws: TunnelPipelineFailure.self) { try exchange(client, server) }
        guard case .handshake(let error) = failure else {
            Issue.record("expected a handshake failure, got \(failure)")
            return
        }
        #expect(error.isCertificateVerificationFailure)
    }

    @Test func corruptRecordIsATLSError() throws {
        let (client, server) = try openPair()
        #expect(try frame(.binary, tunnelStream([[1, 2, 3]])).withUnsafeBytes { try server.pipeline.writeFrame($0) })
        let out = server.pipeline.tls.ciphertextOut
        let span = out.readableSpans.0
        span[span.count - 1] ^= 0x01
        moveCiphertext(from: server, to: client)
        let failure = try #require(throws: TunnelPipelineFailure.self) { try client.pump() }
        guard case .tls = failure else {
            Issue.record("expected a TLS failure, got \(failure)")
            return
        }
        #expect(client.recorder.events.isEmpty)
    }
}
