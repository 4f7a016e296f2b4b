// TunnelConnection against a tunneling service in the test process (TunnelTestService.swift):
// real TCP, TLS and WebSocket, so each lifecycle transition of the class's table is driven by
// what a service really sends. Every test waits for events with a deadline, and ends with the
// loop closing with no live handle.
import Testing
import TunnelCore
import TunnelIO
import TunnelTLS
@testable import LocalProxy

/// A masked binary frame carrying `message`, as LocalLink builds it.
private func dataFrame(_ message: TunnelMessage, key: WebSocketMaskingKey) throws -> [UInt8] {
    let payload = try TunnelFrame.encode(message)
    return payload.withUnsafeBytes { WebSocketFrameEncoder.frame(opcode: .binary, payload: $0, maskingKey: key) }
}

private func closeFrames(_ server: TestServiceConnection) -> [String] {
    server.closeFrames.map { "\($0.code.map { String($0) } ?? "none") \($0.reason)" }
}

@Suite("Tunnel connection", .serialized)
struct TunnelConnectionTests {
    @Test func opensAndCarriesMessagesBothWays() throws {
        let bed = try TunnelTestBed()
        defer { bed.finish() }
        let (connection, recorder, server) = try bed.openConnection()
        #expect(recorder.opened?.subprotocol == TunnelSubprotocol.v3)
        #expect(recorder.opened?.channelId == "test-channel-1")
        guard case .open = connection.state else {
            Issue.record("state \(connection.state) after the upgrade")
            return
        }
        let request = try #require(server.request)
        #expect(request.target == "/tunnel?local-proxy-mode=source")
        #expect(request.headers.first("access-token") == "test-access-token")
        #expect(request.protocols == [TunnelSubprotocol.v3])

        // The service's messages arrive in order, with their fields.
        let answer = Array("an answer".utf8)
        try server.send(TunnelMessage(type: .serviceIds, availableServiceIds: [Array("SSH".utf8)]))
        try answer.withUnsafeBytes {
            try server.send(TunnelMessage(type: .data, streamId: 4, payload: $0, serviceId: Array("SSH".utf8), connectionId: 2))
        }
        run(bed.loop, until: { recorder.messages.count == 2 }, "two messages")
        #expect(recorder.messages.map(\.type) == [.serviceIds, .data])
        #expect(recorder.messages.last == Received(.data, stream: 4, service: "SSH", connection: 2, payload: answer))

        // Ours reach the service: a control message, then a data frame built outside.
        let question = Array("a question".utf8)
        connection.send(TunnelMessage(type: .streamStart, streamId: 4, serviceId: Array("SSH".utf8), connectionId: 2))
        let frame = try question.withUnsafeBytes {
            try dataFrame(TunnelMessage(type: .data, streamId: 4, payload: $0, serviceId: Array("SSH".utf8), connectionId: 2),
                          key: connection.nextMaskingKey())
        }
        #expect(connection.canWrite(frame.count))
        #expect(frame.withUnsafeBytes { connection.writeFrame($0) })
        run(bed.loop, until: { server.messages.count == 2 }, "the service to receive two messages")
        #expect(server.messages == [Received(.streamStart, stream: 4, service: "SSH", connection: 2),
                                    Received(.data, stream: 4, service: "SSH", connection: 2, payload: question)])
        #expect(server.problems.isEmpty, "\(server.problems)")
        #expect(recorder.closed.isEmpty)
    }

    /// `stop`: our close frame (1000), the state waits for the answer, which ends the connection
    /// with `.stopped`, reported once.
    @Test func stopSendsACloseFrameAndEndsOnTheAnswer() throws {
        let bed = try TunnelTestBed()
        defer { bed.finish() }
        let (connection, recorder, server) = try bed.openConnection()
        connection.stop()
        guard case .closing(let reason, let acknowledged) = connection.state else {
            Issue.record("state \(connection.state) after stop()")
            return
        }
        #expect("\(reason)" == "stopped" && !acknowledged)
        #expect(!connection.canWrite(1), "no data after our close frame")
        run(bed.loop, until: { !recorder.closed.isEmpty }, "the close")
        #expect(closeFrames(server) == ["1000 local proxy stopping"])
        #expect(recorder.closed.map { "\($0)" } == ["stopped"])
        guard case .closed = connection.state else {
            Issue.record("state \(connection.state) after the close")
            return
        }
        // Nothing more is reported, whatever is asked.
        connection.stop()
        connection.abort("again")
        #expect(recorder.closed.count == 1)
        run(bed.loop, until: { server.readEnd != nil }, "the service to see the end of the connection")
    }

    /// The service's close frame is answered with its code, and its reason is what the owner hears.
    @Test func closeFrameFromTheServiceIsAnsweredAndReported() throws {
        let bed = try TunnelTestBed()
        defer { bed.finish() }
        let (connection, recorder, server) = try bed.openConnection()
        server.sendClose(code: 1008, reason: "token rotated")
        run(bed.loop, until: { !recorder.closed.isEmpty }, "the close")
        guard case .closedByService(let code, let reason)? = recorder.closed.first else {
            Issue.record("expected .closedByService, got \(recorder.closed)")
            return
        }
        #expect(code == 1008 && reason == "token rotated")
        #expect(recorder.closed.count == 1)
        run(bed.loop, until: { server.readEnd != nil }, "the service to see the end of the connection")
        #expect(closeFrames(server) == ["1008 "], "problems: \(server.problems), ended: \(String(describing: server.readEnd))")
        guard case .closed = connection.state else {
            Issue.record("state \(connection.state)")
            return
        }
    }

    @Test func pingsGetPongsBothWays() throws {
        let bed = try TunnelTestBed()
        defer { bed.finish() }
        let (_, recorder, server) = try bed.openConnection(pingIntervalMilliseconds: 20)
        // Our pings carry the loop time; the service's pong comes back and is logged.
        run(bed.loop, until: { bed.lines.contains("debug: pong from the service after") }, "a pong")
        // The service's ping is answered with its payload.
        server.ping([1, 2, 3])
        run(bed.loop, until: { server.pongs.contains([1, 2, 3]) }, "our pong")
        #expect(recorder.closed.isEmpty)
    }

    /// A service that reads nothing and sends nothing is presumed dead once the pong deadline
    /// passes.
    @Test func silentServiceFailsThePongDeadline() throws {
        let bed = try TunnelTestBed()
        defer { bed.finish() }
        let (_, recorder, server) = try bed.openConnection(pingIntervalMilliseconds: 20, pongTimeoutMilliseconds: 100)
        server.stopReading()
        run(bed.loop, until: { !recorder.closed.isEmpty }, "the pong deadline")
        guard case .failed(let why)? = recorder.closed.first else {
            Issue.record("expected .failed, got \(recorder.closed)")
            return
        }
        #expect(why.contains("nothing from the service for") && why.contains("--pong-timeout-ms 100"), "\(why)")
    }

    @Test func refusedUpgradeIsRejectedWithStatusAndBody() throws {
        let bed = try TunnelTestBed()
        defer { bed.finish() }
        bed.service.answer = .reject(status: 403, body: "the access token\nwas revoked")
        let (connection, recorder) = try bed.connection()
        connection.start()
        run(bed.loop, until: { !recorder.closed.isEmpty }, "the refusal")
        guard case .rejected(let status, let reason, let body)? = recorder.closed.first else {
            Issue.record("expected .rejected, got \(recorder.closed)")
            return
        }
        // The body is kept on one line, for the log.
        #expect(status == 403 && reason == "Forbidden" && body == "the access token was revoked")
        #expect(recorder.opened == nil)
        #expect(recorder.closed.count == 1)
    }

    @Test func untrustedCertificateIsACertificateFailure() throws {
        let bed = try TunnelTestBed()
        defer { bed.finish() }
        let (connection, recorder) = try bed.connection(trust: bed.certificates.otherCA)
        connection.start()
        run(bed.loop, until: { !recorder.closed.isEmpty }, "the TLS failure")
        guard case .certificate(let error)? = recorder.closed.first else {
            Issue.record("expected .certificate, got \(recorder.closed)")
            return
        }
        #expect(error.isCertificateVerificationFailure)
        #expect(recorder.opened == nil)
    }

    /// A service that takes the TCP connection and never answers TLS: the handshake deadline.
    @Test func handshakeDeadline() throws {
        let bed = try TunnelTestBed()
        defer { bed.finish() }
        bed.service.reads = false
        let (connection, recorder) = try bed.connection()
        connection.start(handshakeTimeoutMilliseconds: 50)
        run(bed.loop, until: { !recorder.closed.isEmpty }, "the deadline")
        guard case .failed(let why)? = recorder.closed.first else {
            Issue.record("expected .failed, got \(recorder.closed)")
            return
        }
        #expect(why == "no WebSocket connection to localhost:\(bed.service.port) within 0 s")
    }

    /// `stop` before the tunnel is open ends at once: there is no WebSocket to close politely.
    @Test func stopWhileConnectingEndsAtOnce() throws {
        let bed = try TunnelTestBed()
        defer { bed.finish() }
        bed.service.reads = false
        let (connection, recorder) = try bed.connection()
        connection.start()
        run(bed.loop, until: { bed.service.latest != nil }, "the TCP connection")
        connection.stop()
        #expect(recorder.closed.map { "\($0)" } == ["stopped"])
    }

    @Test func abortEndsAtOnceAndReportsOnce() throws {
        let bed = try TunnelTestBed()
        defer { bed.finish() }
        let (connection, recorder, server) = try bed.openConnection()
        connection.abort("enough")
        #expect(recorder.closed.map { "\($0)" } == ["enough"])
        guard case .closed = connection.state else {
            Issue.record("state \(connection.state) after abort")
            return
        }
        // A closed connection takes nothing.
        #expect(!connection.canWrite(1))
        let frame = try dataFrame(TunnelMessage(type: .data, streamId: 1), key: connection.nextMaskingKey())
        #expect(!frame.withUnsafeBytes { connection.writeFrame($0) })
        connection.send(TunnelMessage(type: .streamReset, streamId: 1))
        connection.abort("twice")
        connection.stop()
        #expect(recorder.closed.count == 1)
        run(bed.loop, until: { server.readEnd != nil }, "the service to see the end of the connection")
        #expect(server.messages.isEmpty)
    }

    @Test func serviceDroppingTheConnectionIsAFailure() throws {
        let bed = try TunnelTestBed()
        defer { bed.finish() }
        let (_, recorder, server) = try bed.openConnection()
        server.closeSocket()
        run(bed.loop, until: { !recorder.closed.isEmpty }, "the end")
        #expect(recorder.closed.map { "\($0)" } == ["the service closed the connection without a close frame"])
    }

    /// A message that does not decode: our close frame 1007, then the end, reported as a failure
    /// (the runtime reconnects).
    @Test func undecodableMessageClosesWithInvalidPayload() throws {
        let bed = try TunnelTestBed()
        defer { bed.finish() }
        let (connection, recorder, server) = try bed.openConnection()
        server.answersCloseFrames = false
        // A tunnel frame of 3 bytes whose first field key never ends.
        server.sendRaw(WebSocketFrameEncoder.frame(opcode: .binary, payload: [0x00, 0x03, 0xFF, 0xFF, 0xFF], maskingKey: nil))
        run(bed.loop, until: { !recorder.closed.isEmpty }, "the close")
        guard case .failed(let why)? = recorder.closed.first else {
            Issue.record("expected .failed, got \(recorder.closed)")
            return
        }
        #expect(why.hasPrefix("undecodable tunnel message: "), "\(why)")
        run(bed.loop, until: { server.readEnd != nil }, "the service to see the end of the connection")
        #expect(closeFrames(server) == ["1007 undecodable tunnel message"])
        #expect(recorder.messages.isEmpty)
        guard case .closed = connection.state else {
            Issue.record("state \(connection.state)")
            return
        }
    }
}
