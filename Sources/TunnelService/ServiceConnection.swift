import TunnelCore
import TunnelIO
import TunnelTLS

/// Where an admitted connection belongs: its tunnel, its side, what it negotiated, and the
/// per-connection state of the message rules.
struct Attachment {
    let relay: TunnelRelay
    let side: Side
    let subprotocol: String
    var rules: ConnectionRules
}

/// One client's connection to the emulated data plane: TLS (server role), the HTTP upgrade,
/// then tunnel messages in binary WebSocket frames. The server-side counterpart of the local
/// proxy's `TunnelConnection`, running the same `TunnelPipeline` in the server role:
///
///   socket → `tls.ciphertextIn` → decrypt → plaintext → WebSocket decoder → tunnel frame
///   decoder → rules → the other side's `outgoing` queue → frames → TLS → socket.
///
/// Every stage is a fixed-size buffer. A sender stops parsing while its peer's queue lacks room
/// for the largest message, so its plaintext and ciphertext buffers fill, its socket stops being
/// read, and TCP pushes back on the client: memory stays bounded whatever the clients do.
///
/// Lifecycle (each state lists where it can go next, and why):
/// - `tlsHandshake` → `readingRequest` (handshake done) | `closed` (TLS failure, timeout, EOF)
/// - `readingRequest` → `open` (admitted) | `rejecting` (refused) | `closed` (timeout, EOF)
/// - `rejecting` → `draining` once the error response is in TLS: the response is the last word
/// - `open` → `closing` (either side sent a close frame) | `closed` (transport lost)
/// - `closing` → `draining` once both close frames crossed | `closed` (timeout, transport lost)
/// - `draining` → `closed` once close_notify and everything before it reached the socket
final class ServiceConnection: TunnelPipelineHandler {
    enum State: Equatable {
        case tlsHandshake
        case readingRequest
        case rejecting
        case open
        case closing
        case draining
        case closed
    }

    /// Relayed bytes waiting to be framed. Large enough for a full passthrough group (one frame)
    /// plus a whole message, so a sender blocked mid-group can always make progress.
    static let outgoingCapacity = 512 * 1024
    /// Room a sender needs in this queue before it may hand over its next message: the largest
    /// framed tunnel message.
    static let messageRoom = TunnelFrame.prefixLength + TunnelFrame.maximumMessageLength
    /// How long the opening (TLS and upgrade) and the closing handshake may take.
    static let handshakeTimeoutMilliseconds: UInt64 = 10_000
    static let closeTimeoutMilliseconds: UInt64 = 3_000

    let id: Int
    let channelId: String
    unowned let plane: DataPlane
    private(set) var state = State.tlsHandshake
    private let socket: SocketStream
    private let pipeline: TunnelPipeline
    private var tls: TLSEngine { pipeline.tls }
    private var head = HTTPHeadReader(limit: Admission.maximumHeadLength)

    private var outgoing: RingBuffer? = nil
    private var framing: OutboundFraming
    /// One frame is assembled here (header, then payload copied out of `outgoing`) so that
    /// mbedTLS gets it in one call and cuts it into full-size records.
    private var scratch: UnsafeMutableRawPointer? = nil
    /// Service messages that did not fit into `outgoing` yet; they keep their place in line
    /// because senders wait while this is not empty.
    private var serviceBacklog: [[UInt8]] = []
    /// Our close frame, held until the messages queued before it are out: (code, reason), or
    /// a nil code for an empty close frame.
    private var pendingClose: (code: UInt16?, reason: String)? = nil
    private var closeReceived = false
    private var writing = false

    private let driveRounds = Rounds()
    private let flushRounds = Rounds()
    private let timer: Timer

    var attachment: Attachment? = nil
    /// Set when the connection was refused or closed, for the log.
    private(set) var endReason = ""

    init(id: Int, channelId: String, plane: DataPlane, loop: EventLoop, socket: SocketStream,
         tlsConfiguration: TLSConfiguration, framing: FramingMode) throws(TLSError) {
        self.id = id
        self.channelId = channelId
        self.plane = plane
        self.socket = socket
        self.framing = OutboundFraming(mode: framing)
        let tls = try TLSEngine(configuration: tlsConfiguration, serverName: nil)
        pipeline = try TunnelPipeline(role: .server, tls: tls, random: nil)
        timer = Timer(loop: loop)
    }

    var side: Side? { attachment?.side }
    var log: ServiceLog { plane.log }
    private var label: String { attachment.map { "connection \(id) (\($0.side) of \($0.relay.tunnelId))" } ?? "connection \(id)" }

    func start() {
        timer.start(after: ServiceConnection.handshakeTimeoutMilliseconds) { [self] in
            if state == .tlsHandshake || state == .readingRequest {
                log.info("\(label): no complete upgrade within \(ServiceConnection.handshakeTimeoutMilliseconds / 1000) s")
                teardown("handshake timeout")
            }
        }
        let engine = tls
        socket.setNoDelay()
        socket.allocate = { engine.ciphertextIn.writableSpans.0 }
        socket.onRead = { [self] result in
            switch result {
            case .success(let n):
                tls.ciphertextIn.commit(n)
                drive()
            case .failure(let error):
                if error.code == UVError.endOfFile {
                    teardown(state == .draining ? "closed" : "the client closed the TCP connection")
                } else {
                    teardown("connection lost: \(error)")
                }
            }
        }
        socket.startReading()
    }

    // MARK: Inbound

    /// Moves bytes through every stage as far as the buffers allow. Called after each read,
    /// after each completed write, and when a paused sender's peer has room again. Re-entrant
    /// calls (a relay into our peer can come back to us) only ask for one more round.
    func drive() {
        driveRounds.run(while: { state != .closed }, step)
    }

    private func step() {
        guard state != .closed else { return }
        do {
            // A paused sender waits for room in its peer's queue; sending what is queued there
            // is what makes room again.
            while try pipeline.pump(self) == .paused {
                plane.flushPeer(of: self)
                if isPaused || state == .closed { break }
            }
        } catch {
            switch error {
            case .handshake(let tlsError):
                log.info("\(label): TLS handshake failed: \(tlsError)")
                teardown("TLS handshake failed")
            case .tls(let tlsError):
                log.info("\(label): TLS error: \(tlsError)")
                teardown("TLS error")
            }
            return
        }
        guard state != .closed else { return }
        if state != .tlsHandshake {
            plane.flushPeer(of: self)
            if pipeline.peerEndedTLS && state != .draining {
                teardown(state == .open ? "the client ended TLS without a close frame" : "the client ended TLS")
                return
            }
        }
        flush()
        if state != .closed && !socket.isReading && tls.ciphertextIn.writableCount > 0 {
            socket.startReading()
        }
    }

    /// While paused, parsing stops with the current message; the rings behind it fill up.
    private var isPaused: Bool {
        guard state == .open else { return false }
        return pipeline.queuedControlCount >= TunnelPipeline.controlQueueLimit || !plane.canRelay(from: self)
    }

    // MARK: Pipeline events

    var pipelinePaused: Bool { isPaused }

    func pipelineHandshakeDone() {
        state = .readingRequest
        log.trace("\(label): TLS established")
    }

    func pipelineUpgradeBytes(_ bytes: UnsafeRawBufferPointer) -> Int {
        guard state == .readingRequest else { return bytes.count }
        var input = bytes
        do {
            if let parsed = try head.read(&input) {
                let used = bytes.count - input.count
                requestReceived(parsed)
                return used
            }
        } catch {
            reject(Admission.rejection(for: error))
        }
        return bytes.count - input.count
    }

    func pipelineMessage(_ bytes: UnsafeRawBufferPointer) {
        // After a close was sent or received, messages are no longer relayed.
        guard state == .open, attachment != nil else { return }
        switch attachment!.rules.inspect(bytes) {
        case .forward(let summary):
            plane.relay(from: self, message: bytes, summary: summary)
        case .close(let code, let reason):
            protocolError(code: code, reason: reason, detail: reason)
        }
    }

    func pipelineMessageEnded() {
        plane.messageEnded(from: self)
    }

    func pipelinePong(_ payload: UnsafeRawBufferPointer) {}

    func pipelineCloseFrame(code: UInt16?, reason: UnsafeRawBufferPointer) {
        closeFrameReceived(code: code, reason: String(decoding: reason, as: UTF8.self))
    }

    func pipelineProtocolError(_ error: WebSocketProtocolError) {
        protocolError(code: error.closeCode, reason: Self.closeReason(for: error), detail: "\(error)")
    }

    private func requestReceived(_ head: HTTPHead) {
        switch plane.admit(self, head: head) {
        case .failure(let rejection):
            reject(rejection)
        case .success(let admission):
            do {
                outgoing = try RingBuffer(minimumCapacity: ServiceConnection.outgoingCapacity)
            } catch {
                reject(Rejection(500, "Internal error: \(error)"))
                return
            }
            scratch = UnsafeMutableRawPointer.allocate(
                byteCount: WebSocketFrameEncoder.maximumHeaderLength + OutboundFraming.maximumFrame, alignment: 16)
            pipeline.queueRaw(WebSocketUpgradeResponse.switching(
                key: admission.key, subprotocol: admission.request.subprotocol,
                extraHeaders: [HTTPHeader("channel-id", channelId)]))
            state = .open
            pipeline.startFrames()
            timer.stop()
            plane.attach(self, admission)
        }
    }

    private func reject(_ rejection: Rejection) {
        log.info("\(label): upgrade refused: \(rejection.status) \(rejection.body)")
        endReason = "refused with \(rejection.status)"
        pipeline.queueRaw(WebSocketUpgradeResponse.error(
            status: rejection.status, reason: WebSocketUpgradeResponse.reasonPhrase(rejection.status),
            body: rejection.body, extraHeaders: [HTTPHeader("channel-id", channelId)]))
        state = .rejecting
        // Nothing the client sends now can change anything.
        pipeline.discardInput()
    }

    /// A short close reason naming the broken WebSocket rule (the full text goes to the log).
    static func closeReason(for error: WebSocketProtocolError) -> String {
        switch error.reason {
        case .textFrame: return "text frames are not accepted"
        case .frameTooLarge(_, let limit): return "frame larger than \(limit) bytes"
        case .unmaskedClientFrame: return "client frames must be masked"
        case .reservedBitsSet: return "reserved bits set"
        case .reservedOpcode: return "reserved opcode"
        case .fragmentedControlFrame: return "fragmented control frame"
        case .controlFrameTooLong: return "control frame longer than 125 bytes"
        case .continuationWithoutMessage: return "continuation frame without a message"
        case .messageStartedInsideMessage: return "new message inside a fragmented message"
        case .closePayloadOfOneByte: return "close frame with a 1-byte payload"
        case .invalidCloseCode: return "invalid close code"
        case .closeReasonNotUTF8: return "close reason not UTF-8"
        case .maskedServerFrame: return "masked frame"
        }
    }

    private func protocolError(code: UInt16, reason: String, detail: String) {
        if state == .open {
            log.info("\(label): closing with \(code): \(detail)")
            close(code: code, reason: reason)
        } else {
            // Already closing: our close frame stands. The decoder has stopped, so the rest of
            // the input is discarded until the client closes or the close timeout ends it;
            // dropping the connection now could destroy the close frame before it is read.
            log.debug("\(label): after the close: \(detail)")
        }
    }

    // MARK: Outbound

    /// Whether the other side may hand over one more message now.
    var canAcceptMessage: Bool {
        guard state == .open, let outgoing, serviceBacklog.isEmpty else { return false }
        return outgoing.writableCount >= ServiceConnection.messageRoom
    }

    /// Queues a relayed message (protobuf bytes; the prefix is added here). The sender checked
    /// `canAcceptMessage` first.
    func enqueue(message: UnsafeRawBufferPointer, summary: MessageSummary) {
        guard state == .open, let outgoing else { return }
        precondition(outgoing.writableCount >= TunnelFrame.prefixLength + message.count, "relay without room")
        let prefix: [UInt8] = [UInt8(truncatingIfNeeded: message.count >> 8), UInt8(truncatingIfNeeded: message.count)]
        _ = prefix.withUnsafeBytes { outgoing.write($0) }
        _ = outgoing.write(message)
        framing.appended(TunnelFrame.prefixLength + message.count)
        attachment?.rules.delivered(summary)
        // No flush here: the sender flushes us once it has processed what it read, so that
        // everything one read delivered can share frames (coalesce) and TLS gets fewer calls.
    }

    /// Queues a message the service itself sends (already length-prefixed), as a group of its
    /// own so that passthrough framing never merges it with relayed messages.
    func enqueueServiceMessage(_ framed: [UInt8]) {
        guard state == .open else { return }
        serviceBacklog.append(framed)
        moveBacklog()
        flush()
    }

    private func moveBacklog() {
        guard let outgoing else { return }
        while let framed = serviceBacklog.first, outgoing.writableCount >= framed.count {
            framing.closeGroup()
            _ = framed.withUnsafeBytes { outgoing.write($0) }
            framing.appended(framed.count)
            framing.closeGroup()
            serviceBacklog.removeFirst()
        }
    }

    /// The sender's WebSocket message ended: what it completed may go out as one frame.
    func senderMessageEnded() {
        framing.closeGroup()
        flush()
    }

    /// The other side went away: whatever it had queued here is complete as it is.
    func peerDetached() {
        framing.closeGroup()
        flush()
    }

    /// Moves control frames, data frames and the close frame into TLS, and ciphertext onto
    /// the socket.
    func flush() {
        flushRounds.run(while: { state != .closed }, flushOnce)
    }

    private func flushOnce() {
        guard state != .closed else { return }
        let controlSent: Bool
        do {
            controlSent = try pipeline.flushControl()
        } catch {
            teardown("TLS error while sending: \(error)")
            return
        }
        if controlSent {
            switch state {
            case .open:
                writeDataFrames()
            case .closing:
                if !pipeline.closeQueued {
                    writeDataFrames()
                    if let close = pendingClose, (outgoing?.readableCount ?? 0) == 0 {
                        pendingClose = nil
                        pipeline.queueClose(code: close.code, reason: close.reason)
                        flushRounds.request()
                    }
                } else if pipeline.closeWritten && closeReceived {
                    beginDrain()
                }
            case .rejecting:
                // The error response is in TLS: end the session behind it.
                beginDrain()
            default:
                break
            }
        }
        guard state != .closed else { return }
        if !writing && tls.ciphertextOut.readableCount > 0 {
            let (a, b) = tls.ciphertextOut.readableSpans
            let count = a.count + b.count
            writing = true
            socket.write(UnsafeRawBufferPointer(a), UnsafeRawBufferPointer(b)) { [self] error in
                writing = false
                guard state != .closed else { return }
                if let error {
                    teardown("sending failed: \(error)")
                    return
                }
                tls.ciphertextOut.consume(count)
                drive()
            }
        } else if !writing && state == .draining && tls.ciphertextOut.readableCount == 0 {
            teardown(endReason.isEmpty ? "closed" : endReason)
        }
    }

    private func writeDataFrames() {
        guard let outgoing, let scratch else { return }
        var freed = false
        let payloadStart = scratch + WebSocketFrameEncoder.maximumHeaderLength
        while let length = framing.nextFrameLength() {
            let header = WebSocketFrameEncoder.headerLength(payloadLength: length, masked: false)
            guard tls.writableCapacity >= header + length else { break }
            let (a, b) = outgoing.readableSpans
            let first = min(length, a.count)
            payloadStart.copyMemory(from: a.baseAddress!, byteCount: first)
            if length > first { (payloadStart + first).copyMemory(from: b.baseAddress!, byteCount: length - first) }
            WebSocketFrameEncoder.writeHeader(opcode: .binary, payloadLength: length, maskingKey: nil, endingAt: payloadStart)
            let frame = UnsafeRawBufferPointer(start: payloadStart - header, count: header + length)
            do {
                guard try pipeline.writeFrame(frame) else { break }
            } catch {
                teardown("TLS error while sending: \(error)")
                return
            }
            outgoing.consume(length)
            framing.sent(length)
            freed = true
        }
        if !serviceBacklog.isEmpty { moveBacklog() }
        if freed { plane.drained(self) }
    }

    // MARK: Closing

    /// Closes from the service's side: detaches from the tunnel at once, sends what was already
    /// queued, then the close frame, and waits (bounded) for the client's answer.
    func close(code: UInt16, reason: String) {
        switch state {
        case .open:
            state = .closing
            endReason = "closed by the service with \(code) (\(reason))"
            plane.detach(self)
            framing.closeGroup()
            moveBacklog()
            pendingClose = (code, reason)
            startCloseTimer()
            flush()
        case .tlsHandshake, .readingRequest:
            teardown("closed before the upgrade: \(reason)")
        case .rejecting, .closing, .draining, .closed:
            break
        }
    }

    private func closeFrameReceived(code: UInt16?, reason: String) {
        closeReceived = true
        log.debug("\(label): close frame from the client (\(code.map { String($0) } ?? "no code")\(reason.isEmpty ? "" : ", \(reason)"))")
        switch state {
        case .open:
            state = .closing
            endReason = "closed by the client with \(code.map { String($0) } ?? "no code")"
            plane.detach(self)
            dropOutgoing()
            // Echo the client's code (RFC 6455 §5.5.1); a close without one gets an empty one.
            pendingClose = (code, "")
            startCloseTimer()
            flush()
        case .closing:
            if pipeline.closeWritten {
                beginDrain()
            } else {
                // The client will read nothing more: our close frame goes out now.
                dropOutgoing()
                flush()
            }
        default:
            break
        }
    }

    private func dropOutgoing() {
        outgoing?.removeAll()
        framing = OutboundFraming(mode: framing.mode)
        serviceBacklog.removeAll()
    }

    private func startCloseTimer() {
        timer.start(after: ServiceConnection.closeTimeoutMilliseconds) { [self] in
            if state == .closing || state == .draining { teardown("closing handshake timed out") }
        }
    }

    private func beginDrain() {
        guard state != .draining && state != .closed else { return }
        state = .draining
        pipeline.discardInput()
        tls.close()
        flush()
    }

    /// Drops the connection at once (no close frame): for shutdown's last resort and for
    /// transport failures.
    func abort(_ why: String) { teardown(why) }

    private func teardown(_ why: String) {
        guard state != .closed else { return }
        state = .closed
        if endReason.isEmpty { endReason = why }
        plane.detach(self)
        timer.close()
        socket.close()
        outgoing = nil
        scratch?.deallocate()
        scratch = nil
        pipeline.finish()
        serviceBacklog.removeAll()
        plane.removed(self, why: endReason)
    }
}

/// A step run again and again while something asked for another round: a call made while the
/// step runs (re-entrantly, through a relay into the peer and back, or by the step itself)
/// does not nest but asks for one more round once the current one ends.
final class Rounds {
    private var running = false
    private var again = false

    /// Asks for one more round of the step that is running.
    func request() { again = true }

    /// Runs `step` now, or, when it is already running, asks for another round. Rounds go on
    /// while one was asked for and `keepGoing` holds.
    func run(while keepGoing: () -> Bool, _ step: () -> Void) {
        if running {
            again = true
            return
        }
        running = true
        repeat {
            again = false
            step()
        } while again && keepGoing()
        running = false
    }
}
