import TunnelCore

/// What a `TunnelPipeline` hands its owner while it parses. Every call comes from inside
/// `pump(_:)`; byte views are valid only during the call.
public protocol TunnelPipelineHandler: AnyObject {
    /// The TLS handshake finished: the owner sends its side of the HTTP upgrade.
    func pipelineHandshakeDone()
    /// Plaintext that arrived before the WebSocket started (the upgrade request or response).
    /// Returns how many of the bytes were used. The owner calls `startFrames()` once the head
    /// is complete, or `discardInput()` when nothing more the peer sends matters.
    func pipelineUpgradeBytes(_ bytes: UnsafeRawBufferPointer) -> Int
    /// One whole tunnel message: protobuf bytes, without the 2-byte length prefix.
    func pipelineMessage(_ bytes: UnsafeRawBufferPointer)
    /// The binary WebSocket message that carried the messages delivered so far ended.
    func pipelineMessageEnded()
    func pipelinePong(_ payload: UnsafeRawBufferPointer)
    /// The peer's close frame. Nothing after it is decoded.
    func pipelineCloseFrame(code: UInt16?, reason: UnsafeRawBufferPointer)
    /// The peer broke RFC 6455. Nothing after the error is decoded.
    func pipelineProtocolError(_ error: WebSocketProtocolError)
    /// While true, no more messages are taken: the plaintext and ciphertext buffers fill up and
    /// the owner's socket stops being read, which pushes back on the peer through TCP.
    var pipelinePaused: Bool { get }
}

/// Why a pump stopped with an error.
public enum TunnelPipelineFailure: Error, CustomStringConvertible {
    /// The TLS handshake failed (certificate, alert, protocol).
    case handshake(TLSError)
    /// A record did not decrypt or TLS broke after the handshake.
    case tls(TLSError)

    public var description: String {
        switch self {
        case .handshake(let error): return "TLS handshake failed: \(error)"
        case .tls(let error): return "TLS error: \(error)"
        }
    }
}

/// The bytes of one tunnel connection, in both directions, with no I/O of its own: the
/// TLS → WebSocket → tunnel-frame pipeline that the local proxy (client role) and the emulated
/// service (server role) both run.
///
/// Inbound: the owner puts what its socket read into `tls.ciphertextIn` and calls `pump`;
/// records are decrypted into `plaintext`, WebSocket frames are unmasked there in place, and
/// tunnel messages are handed over as views into it (only a message that wraps around the ring
/// is copied, into the frame decoder's bounded accumulator). Every stage stops when the next one
/// is full, so memory is fixed whatever the peer sends.
///
/// Outbound: control frames (the HTTP upgrade, pongs, tunnel control messages, the close frame)
/// wait in a queue and go into TLS whole and in order; data frames are written whole, only when
/// the queue is empty. What the owner sends to its socket is `tls.ciphertextOut`.
public final class TunnelPipeline {
    public enum Phase: Equatable {
        /// TLS handshake in progress.
        case tlsHandshake
        /// Plaintext goes to `pipelineUpgradeBytes` (the HTTP upgrade).
        case upgrade
        /// WebSocket frames carrying tunnel messages.
        case frames
        /// Everything decrypted is dropped (a refused upgrade, a connection being drained).
        case discarding
        /// `finish()` was called: nothing more happens.
        case finished
    }

    /// Control frames queued beyond this many make a server owner stop reading (a peer that
    /// sends pings without reading the answers cannot make the queue grow: pongs coalesce).
    public static let controlQueueLimit = 64

    public let role: WebSocketRole
    public let tls: TLSEngine
    public private(set) var phase = Phase.tlsHandshake
    /// Decrypted bytes not parsed yet. 64 KiB: one tunnel message (at most 64 KiB + 2) mostly
    /// fits in one span; one that wraps is gathered by the frame decoder.
    let plaintext: RingBuffer
    private let webSocket: WebSocketFrameDecoder
    private let frames = TunnelFrameDecoder()
    /// The part of the current binary frame's payload that the frame decoder has not taken
    /// yet: a view into `plaintext`, whose bytes are consumed as they are taken.
    private var pendingChunk = UnsafeRawBufferPointer(start: nil, count: 0)
    private var chunkEndsMessage = false
    private let random: SecureRandom?

    private enum ControlKind { case bytes, pong, close }
    private var controlQueue: [(kind: ControlKind, bytes: [UInt8])] = []
    /// A close frame was queued: no data frame and no pong follows it.
    public private(set) var closeQueued = false
    /// The queued close frame went into TLS.
    public private(set) var closeWritten = false

    /// `random` gives the masking keys of a client's frames; a server's frames are not masked.
    public init(role: WebSocketRole, tls: TLSEngine, random: SecureRandom?,
                plaintextCapacity: Int = 64 * 1024) throws(TLSError) {
        precondition(role == .server || random != nil, "a client pipeline needs masking keys")
        self.role = role
        self.tls = tls
        self.random = random
        webSocket = WebSocketFrameDecoder(role: role)
        do {
            plaintext = try RingBuffer(minimumCapacity: plaintextCapacity)
        } catch {
            throw TLSError(-1, "allocating the plaintext buffer: \(error)")
        }
    }

    // MARK: Inbound

    public enum PumpOutcome: Equatable {
        /// Nothing more moves until more ciphertext arrives (or room appears downstream).
        case idle
        /// The handler is paused; call `pump` again once it resumes.
        case paused
    }

    /// Moves bytes through every stage as far as the buffers and the handler allow. Call it
    /// after each socket read, after each completed socket write (TLS may have wanted to
    /// write), and when the handler resumes.
    @discardableResult
    public func pump<Handler: TunnelPipelineHandler>(_ handler: Handler) throws(TunnelPipelineFailure) -> PumpOutcome {
        if phase == .tlsHandshake {
            let status: TLSStatus
            do {
                status = try tls.handshake()
            } catch {
                throw .handshake(error)
            }
            guard status == .done else { return .idle }
            phase = .upgrade
            handler.pipelineHandshakeDone()
        }
        // Decrypt and parse until neither moves: parsing frees plaintext room, which lets more
        // ciphertext be decrypted, which frees room for the socket. With the socket stopped
        // (its ring full), no later read event would come to do it.
        // Progress is counted in bytes moved, not bytes left buffered: mbedTLS keeps the rest
        // of a record it already took out of `ciphertextIn`, so one round can decrypt exactly
        // what parsing then consumes, leave every count as it was, and still have more waiting
        // inside mbedTLS. Stopping then would stall a paused receiver until some unrelated
        // write woke it.
        while phase != .finished {
            let beforeDecrypting = plaintext.readableCount
            try decrypt()
            let beforeParsing = plaintext.readableCount
            parse(handler)
            if phase == .finished { break }
            if phase == .frames && handler.pipelinePaused { return .paused }
            if beforeParsing == beforeDecrypting && plaintext.readableCount == beforeParsing { break }
        }
        return .idle
    }

    /// True once the peer's close_notify arrived and everything before it was parsed.
    public var peerEndedTLS: Bool {
        tls.receivedCloseNotify && plaintext.readableCount == 0 && pendingChunk.isEmpty
    }

    /// Decrypted bytes waiting to be parsed (for tests and diagnostics).
    public var bufferedPlaintext: Int { plaintext.readableCount + frames.bufferedByteCount }

    /// The upgrade is complete: what follows is WebSocket frames.
    public func startFrames() {
        guard phase == .upgrade else { return }
        phase = .frames
    }

    /// From now on, everything the peer sends is decrypted and dropped (by the next pump: a
    /// handler may call this while it is being given bytes).
    public func discardInput() {
        guard phase != .finished else { return }
        phase = .discarding
        pendingChunk = UnsafeRawBufferPointer(start: nil, count: 0)
    }

    /// Ends the pipeline: nothing more is parsed or queued. The owner closes its socket.
    public func finish() {
        phase = .finished
        pendingChunk = UnsafeRawBufferPointer(start: nil, count: 0)
        controlQueue.removeAll()
    }

    private func decrypt() throws(TunnelPipelineFailure) {
        while plaintext.writableCount > 0 && !tls.receivedCloseNotify {
            let n: Int
            do {
                n = try tls.read(into: plaintext.writableSpans.0).0
            } catch {
                throw .tls(error)
            }
            if n == 0 { return }
            plaintext.commit(n)
        }
    }

    private func parse<Handler: TunnelPipelineHandler>(_ handler: Handler) {
        switch phase {
        case .upgrade:
            while phase == .upgrade && plaintext.readableCount > 0 {
                let span = UnsafeRawBufferPointer(plaintext.readableSpans.0)
                let used = handler.pipelineUpgradeBytes(span)
                precondition(used <= span.count, "the upgrade reader used more bytes than it was given")
                if phase == .finished { return }
                plaintext.consume(used)
                if used == 0 { break }
            }
            if phase == .frames { parseFrames(handler) }
            else if phase == .discarding { plaintext.consume(plaintext.readableCount) }
        case .frames:
            parseFrames(handler)
        case .discarding:
            plaintext.consume(plaintext.readableCount)
        case .tlsHandshake, .finished:
            break
        }
    }

    private func parseFrames<Handler: TunnelPipelineHandler>(_ handler: Handler) {
        while phase == .frames {
            if handler.pipelinePaused { return }
            if !pendingChunk.isEmpty {
                var input = pendingChunk
                let message = frames.next(&input)
                plaintext.consume(pendingChunk.count - input.count)
                pendingChunk = input
                if let message { handler.pipelineMessage(message) }
                if pendingChunk.isEmpty && chunkEndsMessage && phase == .frames {
                    chunkEndsMessage = false
                    handler.pipelineMessageEnded()
                }
                continue
            }
            if plaintext.readableCount == 0 { return }
            if webSocket.isFinished {
                // After a close frame or a protocol error nothing more is decoded.
                plaintext.consume(plaintext.readableCount)
                return
            }
            let span = plaintext.readableSpans.0
            var input = span
            let event: WebSocketEvent?
            do {
                event = try webSocket.next(&input)
            } catch {
                plaintext.consume(span.count - input.count)
                handler.pipelineProtocolError(error)
                return
            }
            let used = span.count - input.count
            guard let event else {
                plaintext.consume(used)
                continue
            }
            switch event {
            case .binary(let chunk, let isMessageEnd):
                // The chunk is the tail of what the decoder used; it stays until taken.
                plaintext.consume(used - chunk.count)
                pendingChunk = UnsafeRawBufferPointer(chunk)
                chunkEndsMessage = isMessageEnd
                if chunk.isEmpty && isMessageEnd {
                    chunkEndsMessage = false
                    handler.pipelineMessageEnded()
                }
            case .ping(let payload):
                queuePong(payload)
                plaintext.consume(used)
            case .pong(let payload):
                handler.pipelinePong(payload)
                plaintext.consume(used)
            case .close(let code, let reason):
                handler.pipelineCloseFrame(code: code, reason: reason)
                plaintext.consume(used)
                return
            }
        }
    }

    // MARK: Outbound

    /// A masking key for a client's frame; nil for a server.
    public func nextMaskingKey() -> WebSocketMaskingKey? {
        guard role == .client, let random else { return nil }
        return WebSocketMaskingKey(random.uint32())
    }

    /// Control frames and raw bytes waiting for room in TLS.
    public var queuedControlCount: Int { controlQueue.count }

    /// Queues bytes that go out as they are, in order with the control frames (the HTTP head
    /// of the upgrade).
    public func queueRaw(_ bytes: [UInt8]) {
        guard phase != .finished else { return }
        controlQueue.append((.bytes, bytes))
    }

    /// Queues one whole frame built from `payload` (masked for a client). Nothing is queued
    /// after the close frame.
    public func queueFrame(_ opcode: WebSocketOpcode, payload: UnsafeRawBufferPointer) {
        guard phase != .finished, !closeQueued else { return }
        controlQueue.append((.bytes, WebSocketFrameEncoder.frame(opcode: opcode, payload: payload, maskingKey: nextMaskingKey())))
    }

    /// Queues the close frame (once): with a code and a reason, or empty when `code` is nil.
    public func queueClose(code: UInt16?, reason: String) {
        guard phase != .finished, !closeQueued else { return }
        closeQueued = true
        let frame: [UInt8]
        if let code {
            frame = WebSocketFrameEncoder.closeFrame(code: code, reason: reason, maskingKey: nextMaskingKey())
        } else {
            frame = WebSocketFrameEncoder.frame(opcode: .close, payload: UnsafeRawBufferPointer(start: nil, count: 0),
                                                maskingKey: nextMaskingKey())
        }
        controlQueue.append((.close, frame))
    }

    /// Answers a ping. Only the latest ping needs an answer (RFC 6455 §5.5.3), so a pong still
    /// waiting in the queue takes the new payload instead of a second pong being queued.
    private func queuePong(_ payload: UnsafeRawBufferPointer) {
        guard !closeQueued else { return }
        let frame = WebSocketFrameEncoder.frame(opcode: .pong, payload: payload, maskingKey: nextMaskingKey())
        for i in controlQueue.indices where controlQueue[i].kind == .pong {
            controlQueue[i].bytes = frame
            return
        }
        controlQueue.append((.pong, frame))
    }

    /// Moves queued control frames into TLS, whole and in order, while there is room. Returns
    /// true when the queue is empty.
    @discardableResult
    public func flushControl() throws(TLSError) -> Bool {
        while let entry = controlQueue.first {
            guard tls.writableCapacity >= entry.bytes.count else { return false }
            try writeWhole(entry.bytes)
            controlQueue.removeFirst()
            if entry.kind == .close { closeWritten = true }
        }
        return true
    }

    /// Whether a data frame of `count` bytes would be written now.
    public func canWriteFrame(_ count: Int) -> Bool {
        phase == .frames && controlQueue.isEmpty && !closeQueued && tls.writableCapacity >= count
    }

    /// Writes one complete data frame (header and payload, masked by the caller for a client)
    /// if it fits now; false when it must wait for the socket to drain `tls.ciphertextOut`.
    public func writeFrame(_ frame: UnsafeRawBufferPointer) throws(TLSError) -> Bool {
        guard canWriteFrame(frame.count) else { return false }
        try writeWhole(frame)
        return true
    }

    private func writeWhole(_ bytes: [UInt8]) throws(TLSError) {
        let result: Result<Void, TLSError> = bytes.withUnsafeBytes { raw in
            do throws(TLSError) {
                try writeWhole(raw)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        if case .failure(let error) = result { throw error }
    }

    private func writeWhole(_ bytes: UnsafeRawBufferPointer) throws(TLSError) {
        let taken = try tls.write(bytes)
        // Capacity was checked first, so mbedTLS takes the whole frame: frames never interleave.
        precondition(taken == bytes.count, "TLS took part of a frame despite the capacity check")
    }
}
