// A tunneling service in the test process, for the tests of TunnelConnection and LocalLink: a TCP
// listener on 127.0.0.1, TLS in the server role with a certificate made at test time, the HTTP
// upgrade, then tunnel messages, all through the same TunnelPipeline the emulator runs. The test
// tells it how to answer the upgrade and what to send, and reads what it received. Everything runs
// on the test's loop; the tests wait for events with `run(_:until:)`, never for a fixed time.
import Foundation
import Testing
import TunnelCore
import TunnelIO
import TunnelTLS
@testable import LocalProxy

/// Runs the loop until `done()`; a watchdog timer keeps iterations coming when no I/O happens, so
/// a hung test fails after `timeoutMilliseconds` instead of blocking. Returns whether `done()`.
@discardableResult
func run(_ loop: EventLoop, until done: () -> Bool, timeoutMilliseconds: UInt64 = 10_000,
         _ what: String = "the awaited event", sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
    let watchdog = Timer(loop: loop)
    var expired = false
    watchdog.start(after: timeoutMilliseconds) { expired = true }
    while !done() && !expired { loop.runOnce() }
    watchdog.close()
    if expired { Issue.record("timed out after \(timeoutMilliseconds) ms waiting for \(what)", sourceLocation: sourceLocation) }
    return !expired
}

/// A throwaway CA and a server certificate it signed (SAN localhost), and an unrelated CA, made
/// with the openssl command line in a temporary directory. Nothing is committed.
struct TestCertificates {
    let directory: URL
    var caCertificate: String { directory.appendingPathComponent("ca.pem").path }
    var serverCertificate: String { directory.appendingPathComponent("server.pem").path }
    var serverKey: String { directory.appendingPathComponent("server-key.pem").path }
    /// Trusting only this CA must make verification fail.
    var otherCA: String { directory.appendingPathComponent("other-ca.pem").path }

    static func make() throws -> TestCertificates {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lp-link-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let certs = TestCertificates(directory: dir)
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        try certs.openssl(["req", "-x509"] + ec + ["-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
                          "-subj", "/CN=localproxy test CA", "-addext", "basicConstraints=critical,CA:TRUE",
                          "-addext", "keyUsage=critical,keyCertSign"])
        try certs.openssl(["req", "-x509"] + ec + ["-keyout", "other-ca-key.pem", "-out", "other-ca.pem", "-days", "2",
                          "-subj", "/CN=unrelated CA", "-addext", "basicConstraints=critical,CA:TRUE"])
        try certs.openssl(["req", "-new"] + ec + ["-keyout", "server-key.pem", "-out", "server.csr", "-subj", "/CN=localhost"])
        try "subjectAltName=DNS:localhost\n".write(to: dir.appendingPathComponent("san.ext"), atomically: true, encoding: .utf8)
        try certs.openssl(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                          "-out", "server.pem", "-days", "2", "-extfile", "san.ext"])
        return certs
    }

    private func openssl(_ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = args
        p.currentDirectoryURL = directory
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        if p.terminationStatus != 0 { throw TestSetupError("openssl " + args.joined(separator: " ") + " failed") }
    }

    func remove() { try? FileManager.default.removeItem(at: directory) }
}

struct TestSetupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A tunnel message with its views copied out, comparable after the call that carried it.
struct Received: Equatable, CustomStringConvertible {
    var type: MessageType
    var streamId: Int32
    var serviceId: String
    var connectionId: UInt32
    var payload: [UInt8]

    init(_ m: TunnelMessage) {
        type = m.type
        streamId = m.streamId
        serviceId = String(decoding: m.serviceId, as: UTF8.self)
        connectionId = m.connectionId
        payload = Array(m.payload)
    }

    init(_ type: MessageType, stream: Int32, service: String = "", connection: UInt32 = 0, payload: [UInt8] = []) {
        self.type = type
        streamId = stream
        serviceId = service
        self.connectionId = connection
        self.payload = payload
    }

    var description: String { "\(type) stream \(streamId) service '\(serviceId)' connection \(connectionId) payload \(payload.count) bytes" }
}

/// The listening side: hands each accepted connection to a `TestServiceConnection`.
final class TestService {
    /// How the upgrade request is answered.
    enum Answer {
        /// 101 with the V3 subprotocol and this `channel-id`.
        case accept(channelId: String)
        /// This status with a plain-text body; nothing after it is read.
        case reject(status: Int, body: String)
    }

    let loop: EventLoop
    let tls: TLSConfiguration
    let listener: Listener
    let port: UInt16
    var answer = Answer.accept(channelId: "test-channel-1")
    /// When false, accepted sockets are not read at all (a service that never answers).
    var reads = true
    private(set) var connections: [TestServiceConnection] = []

    init(loop: EventLoop, certificates: TestCertificates, random: SecureRandom) throws {
        self.loop = loop
        tls = try TLSConfiguration.server(certificateFile: certificates.serverCertificate, keyFile: certificates.serverKey, random: random)
        listener = Listener(loop: loop)
        var accepted: (SocketStream) -> Void = { $0.close() }
        try listener.listen(on: SocketAddress(ip: "127.0.0.1", port: 0)!) { accepted($0) }
        port = listener.localAddress?.port ?? 0
        accepted = { [unowned self] stream in
            do {
                connections.append(try TestServiceConnection(service: self, socket: stream))
            } catch {
                Issue.record("the test service cannot take a connection: \(error)")
                stream.close()
            }
        }
    }

    var latest: TestServiceConnection? { connections.last }

    /// Closes the listener and every connection.
    func close() {
        listener.close()
        for c in connections { c.closeSocket() }
    }
}

/// One connection to the test service.
final class TestServiceConnection: TunnelPipelineHandler {
    unowned let service: TestService
    let socket: SocketStream
    let pipeline: TunnelPipeline
    private var head = HTTPHeadReader(limit: 8192)
    private var writing = false
    /// The upgrade request as the client sent it.
    private(set) var request: WebSocketUpgradeRequestHead? = nil
    private(set) var messages: [Received] = []
    private(set) var closeFrames: [(code: UInt16?, reason: String)] = []
    private(set) var pongs: [[UInt8]] = []
    /// A TLS or WebSocket failure on our side, or the client's protocol error.
    private(set) var problems: [String] = []
    /// The client's end of the TCP connection (EOF or an error) arrived.
    private(set) var readEnd: UVError? = nil
    /// Answer a close frame with one of ours (as a service does).
    var answersCloseFrames = true
    private var sentClose = false

    init(service: TestService, socket: SocketStream) throws {
        self.service = service
        self.socket = socket
        let engine = try TLSEngine(configuration: service.tls, serverName: nil)
        pipeline = try TunnelPipeline(role: .server, tls: engine, random: nil)
        socket.allocate = { [unowned engine] in engine.ciphertextIn.writableSpans.0 }
        socket.onRead = { [unowned self] result in
            switch result {
            case .success(let n):
                engine.ciphertextIn.commit(n)
                pump()
            case .failure(let error):
                readEnd = error
            }
        }
        if service.reads { socket.startReading() }
    }

    var upgraded: Bool { pipeline.phase == .frames }

    private func pump() {
        do {
            try pipeline.pump(self)
        } catch {
            problems.append("\(error)")
            return
        }
        flush()
    }

    /// Moves queued frames into TLS and ciphertext onto the socket.
    func flush() {
        do {
            try pipeline.flushControl()
        } catch {
            problems.append("\(error)")
            return
        }
        guard !writing, !socket.isClosing else { return }
        writing = sendRing(pipeline.tls.ciphertextOut, on: socket) { [unowned self] error in
            writing = false
            if let error { problems.append("\(error)") } else { flush() }
        }
    }

    // Sending.

    func send(_ message: TunnelMessage) throws {
        let payload = try TunnelFrame.encode(message)
        payload.withUnsafeBytes { pipeline.queueFrame(.binary, payload: $0) }
        flush()
    }

    /// Plaintext as it is, e.g. a hand-made WebSocket frame.
    func sendRaw(_ bytes: [UInt8]) {
        pipeline.queueRaw(bytes)
        flush()
    }

    func ping(_ payload: [UInt8]) {
        payload.withUnsafeBytes { pipeline.queueFrame(.ping, payload: $0) }
        flush()
    }

    func sendClose(code: UInt16, reason: String) {
        sentClose = true
        pipeline.queueClose(code: code, reason: reason)
        flush()
    }

    /// Stops reading the client (its pings then go unanswered).
    func stopReading() { socket.stopReading() }

    func closeSocket() {
        socket.close()
    }

    // TunnelPipelineHandler

    func pipelineHandshakeDone() {}

    func pipelineUpgradeBytes(_ bytes: UnsafeRawBufferPointer) -> Int {
        var input = bytes
        do {
            guard let parsed = try head.read(&input) else { return bytes.count - input.count }
            let request = try WebSocketUpgradeRequestHead(parsed)
            self.request = request
            switch service.answer {
            case .accept(let channelId):
                pipeline.queueRaw(WebSocketUpgradeResponse.switching(key: request.key, subprotocol: TunnelSubprotocol.v3,
                                                                     extraHeaders: [HTTPHeader("channel-id", channelId)]))
                pipeline.startFrames()
            case .reject(let status, let body):
                pipeline.queueRaw(WebSocketUpgradeResponse.error(status: status, reason: WebSocketUpgradeResponse.reasonPhrase(status), body: body))
                pipeline.discardInput()
            }
        } catch {
            problems.append("upgrade request: \(error)")
            pipeline.discardInput()
        }
        return bytes.count - input.count
    }

    func pipelineMessage(_ bytes: UnsafeRawBufferPointer) {
        do {
            messages.append(Received(try TunnelMessage.decode(bytes)))
        } catch {
            problems.append("undecodable message from the client: \(error)")
        }
    }

    func pipelineMessageEnded() {}

    func pipelinePong(_ payload: UnsafeRawBufferPointer) { pongs.append(Array(payload)) }

    func pipelineCloseFrame(code: UInt16?, reason: UnsafeRawBufferPointer) {
        closeFrames.append((code, String(decoding: reason, as: UTF8.self)))
        if answersCloseFrames && !sentClose {
            sentClose = true
            pipeline.queueClose(code: code, reason: "")
        }
    }

    func pipelineProtocolError(_ error: WebSocketProtocolError) { problems.append("client broke the protocol: \(error)") }

    var pipelinePaused: Bool { false }
}

/// What a `TunnelConnection` tells its owner, recorded.
final class TunnelRecorder: TunnelConnectionDelegate {
    private(set) var opened: (subprotocol: String, channelId: String?)? = nil
    private(set) var messages: [Received] = []
    private(set) var closed: [TunnelCloseReason] = []
    private(set) var writableCalls = 0
    var paused = false

    func tunnelOpened(subprotocol: String, channelId: String?) { opened = (subprotocol, channelId) }
    func tunnelMessage(_ message: TunnelMessage) { messages.append(Received(message)) }
    var tunnelReadingPaused: Bool { paused }
    func tunnelWritable() { writableCalls += 1 }
    func tunnelClosed(_ reason: TunnelCloseReason) { closed.append(reason) }
}

/// Collects log lines.
final class LogLines {
    private(set) var all: [String] = []
    func append(_ line: [UInt8]) { all.append(String(decoding: line, as: UTF8.self)) }
    func contains(_ words: String...) -> Bool { all.contains { line in words.allSatisfy { line.contains($0) } } }
}

/// A loop, certificates, the test service and a logger: what a test of a tunnel connection
/// needs. `finish()` closes everything and checks that the loop closes with no live handle.
final class TunnelTestBed {
    let loop: EventLoop
    let certificates: TestCertificates
    let random: SecureRandom
    let service: TestService
    let lines = LogLines()
    let logger: Logger
    private var made: [TunnelConnection] = []

    init() throws {
        loop = try EventLoop()
        certificates = try TestCertificates.make()
        random = try SecureRandom()
        service = try TestService(loop: loop, certificates: certificates, random: random)
        let lines = self.lines
        logger = Logger(verbosity: 6) { lines.append($0) }
    }

    /// A connection to the test service (not started), trusting `trust` (the test CA by default).
    func connection(trust: String? = nil, pingIntervalMilliseconds: Int = 60_000, pongTimeoutMilliseconds: Int = 0,
                    mode: TunnelMode = .source) throws -> (TunnelConnection, TunnelRecorder) {
        let tls = try TLSConfiguration.client(trustPaths: [trust ?? certificates.caCertificate], verify: true, random: random)
        let endpoint = TunnelEndpoint(host: "localhost", port: service.port, mode: mode, accessToken: "test-access-token",
                                      clientToken: nil)
        let connection = TunnelConnection(loop: loop, resolver: Resolver(), endpoint: endpoint, tls: tls, random: random, logger: logger,
                                          pingIntervalMilliseconds: pingIntervalMilliseconds,
                                          pongTimeoutMilliseconds: pongTimeoutMilliseconds)
        let recorder = TunnelRecorder()
        connection.delegate = recorder
        made.append(connection)
        return (connection, recorder)
    }

    /// A started connection, once the upgrade is done on both sides.
    func openConnection(pingIntervalMilliseconds: Int = 60_000, pongTimeoutMilliseconds: Int = 0)
        throws -> (TunnelConnection, TunnelRecorder, TestServiceConnection) {
        let (connection, recorder) = try connection(pingIntervalMilliseconds: pingIntervalMilliseconds,
                                                    pongTimeoutMilliseconds: pongTimeoutMilliseconds)
        connection.start()
        run(loop, until: { recorder.opened != nil || !recorder.closed.isEmpty }, "the tunnel to open")
        guard recorder.opened != nil, let server = service.latest, server.upgraded else {
            throw TestSetupError("the tunnel did not open: \(recorder.closed)")
        }
        return (connection, recorder, server)
    }

    /// Ends the connections still up, closes the service and waits for every handle to be gone.
    func finish() {
        for connection in made { connection.abort("the test is over") }
        service.close()
        #expect(loop.close(), "the loop still had live handles: \(loop.liveHandleCount)")
        certificates.remove()
    }
}
