import TunnelCore
import TunnelIO

/// What a local connection reports to its owner.
protocol LocalLinkOwner: AnyObject {
    func linkConnected(_ link: LocalLink)
    func linkConnectFailed(_ link: LocalLink, reason: String)
    func linkRetryDue(_ link: LocalLink)
    /// The local side ended (EOF or error) and every byte read from it has gone to the tunnel.
    func linkEnded(_ link: LocalLink)
    /// A write to the local side failed after its reading side had ended: it is fully gone.
    func linkBroken(_ link: LocalLink)
    func linkClosed(_ link: LocalLink)
    /// The link's queue toward the local socket passed the high-water mark (true) or drained
    /// below the low-water mark (false). Only links still in the session are congested: a link
    /// that is closing takes no more tunnel data, so it never holds the tunnel back.
    func linkCongestion(_ link: LocalLink, congested: Bool)
    /// A frame of the link waits for room in the tunnel's outgoing buffer.
    func linkWaitsForTunnel(_ link: LocalLink)
    /// The DATA fields for bytes read from this link (nil: the link is no longer in a stream).
    func dataHeader(for link: LocalLink) -> TunnelMessage?
    var tunnel: TunnelConnection? { get }
}

/// One connection to a local service (TCP or Unix socket), with a bounded queue each way.
///
/// Toward the local socket: DATA payloads are copied once from the tunnel's buffer into
/// `toLocal` and written from there; past the high-water mark the owner pauses the tunnel.
/// Toward the tunnel: each socket read lands in a reservation of `toTunnel` with headroom, and
/// the tunnel frame (length, protobuf head and tail) and the masked WebSocket header are written
/// around the bytes in place; the whole frame then goes to TLS in one piece. The socket is read
/// again only when that frame has been taken, so a full tunnel stops local reads.
final class LocalLink {
    /// WebSocket header + length prefix + protobuf fields before the payload (type, streamId,
    /// ignorable, payload key and length), rounded up.
    static let headroom = TunnelConnection.frameHeadroom + TunnelFrame.prefixLength + 24
    /// Protobuf fields after the payload: serviceId (up to 128 bytes) and connectionId.
    static let tailroom = 3 + TunnelMessage.maximumServiceIdLength + 6 + 3

    enum State { case idle, connecting, open, closing, closed }

    let id: LocalConnectionID
    var owner: LocalLinkOwner?
    let loop: EventLoop
    let resolver: Resolver
    let logger: Logger
    private(set) var state = State.idle
    private var stream: SocketStream? = nil
    private let toLocal: RingBuffer
    private let toTunnel: RingBuffer
    private let maximumPayload: Int
    private var writing = false
    private var reservation: RingBuffer.Reservation? = nil
    /// Length of the frame in `toTunnel` that the tunnel has not taken yet (0: none).
    private var pendingFrame = 0
    private var readEnded = false
    private var congested = false
    /// When the last write to the local socket completed (or congestion began): how long the
    /// local application has taken nothing while the tunnel waits for it.
    private var lastProgress: UInt64 = 0
    /// For the SIGUSR1 statistics: when the link was made, bytes written to the local socket
    /// and bytes read from it.
    let createdAt: UInt64
    private(set) var bytesToLocal: UInt64 = 0
    private(set) var bytesFromLocal: UInt64 = 0
    private var retryTimer: Timer? = nil
    /// The DATA fields of this connection, once known.
    private var dataHeader: TunnelMessage? = nil
    private var endpointText = ""

    init(id: LocalConnectionID, owner: LocalLinkOwner, loop: EventLoop, resolver: Resolver, logger: Logger, maximumPayload: Int) throws(RingBufferError) {
        self.id = id
        self.owner = owner
        self.loop = loop
        self.resolver = resolver
        self.logger = logger
        createdAt = loop.now
        toLocal = try RingBuffer(minimumCapacity: 128 * 1024)
        self.maximumPayload = min(maximumPayload, 64 * 1024 - LocalLink.headroom - LocalLink.tailroom)
        toTunnel = try RingBuffer(minimumCapacity: 64 * 1024)
    }

    /// High-water mark: past it, one more largest message might not fit.
    private var highWater: Int { toLocal.capacity - TunnelMessage.maximumPayloadLength }
    private var lowWater: Int { toLocal.capacity / 4 }

    var queuedTowardLocal: Int { toLocal.readableCount }

    /// Milliseconds the local application has taken no byte while this link holds the tunnel
    /// back, or while it is closing with bytes still to write (0 otherwise).
    func stalledMilliseconds(now: UInt64) -> UInt64 {
        let waiting = congested || (state == .closing && toLocal.readableCount > 0)
        return waiting && now > lastProgress ? now - lastProgress : 0
    }

    // MARK: Connecting

    func connect(_ endpoint: Endpoint) {
        guard state == .idle || state == .connecting else { return }
        state = .connecting
        endpointText = endpoint.description
        switch endpoint {
        case .unix(let path):
            let s = SocketStream(loop: loop, kind: .unixSocket)
            stream = s
            s.connect(toPath: path) { [self] error in connectFinished(s, error) }
        case .tcp(let host, let port):
            resolver.resolve(loop: loop, host: host, port: port) { [self] result in
                guard state == .connecting else { return }
                switch result {
                case .failure(let error):
                    owner?.linkConnectFailed(self, reason: "\(error)")
                case .success(let addresses):
                    let s = SocketStream(loop: loop, kind: .tcp)
                    stream = s
                    s.connect(to: addresses[0]) { [self] error in connectFinished(s, error) }
                }
            }
        }
    }

    private func connectFinished(_ s: SocketStream, _ error: UVError?) {
        guard state == .connecting, s === stream else {
            s.close()
            return
        }
        if let error {
            s.close()
            stream = nil
            owner?.linkConnectFailed(self, reason: "\(error)")
            return
        }
        state = .open
        s.setNoDelay()
        owner?.linkConnected(self)
        guard state == .open else { return }
        startReading()
        flushToLocal()
    }

    /// Takes over a connection accepted from a local client (source mode).
    func adopt(_ s: SocketStream) {
        guard state == .idle else {
            s.close()
            return
        }
        stream = s
        state = .open
        s.setNoDelay()
        startReading()
        flushToLocal()
    }

    func scheduleRetry(after milliseconds: Int) {
        guard state == .connecting else { return }
        let t = retryTimer ?? Timer(loop: loop)
        retryTimer = t
        t.start(after: UInt64(milliseconds)) { [self] in owner?.linkRetryDue(self) }
    }

    // MARK: Tunnel → local

    /// Queues a payload for the local socket (connected or still connecting).
    func enqueue(_ payload: UnsafeRawBufferPointer) {
        guard state == .connecting || state == .open else { return }
        guard toLocal.write(payload) else {
            // The owner pauses the tunnel before this can happen; if it does, dropping bytes
            // silently would corrupt the stream, so the connection is ended instead.
            logger.error("local connection \(id) to \(endpointText): queue overflow, closing it")
            owner?.linkEnded(self)
            return
        }
        if !congested && toLocal.readableCount > highWater {
            congested = true
            lastProgress = loop.now
            logger.debug("local connection \(id) is slower than the tunnel: pausing the tunnel")
            owner?.linkCongestion(self, congested: true)
        }
        flushToLocal()
    }

    private func flushToLocal() {
        guard let stream, state == .open || state == .closing, !writing else { return }
        if toLocal.readableCount == 0 {
            if state == .closing { finishClosing() }
            return
        }
        let (a, b) = toLocal.readableSpans
        let count = a.count + b.count
        writing = true
        stream.write(UnsafeRawBufferPointer(a), UnsafeRawBufferPointer(b)) { [self] error in
            writing = false
            if state == .closed { return }
            if let error {
                logger.debug("writing to local connection \(id) failed: \(error)")
                toLocal.removeAll()
                if readEnded && state == .open {
                    owner?.linkBroken(self)
                } else {
                    readFailed()
                }
                if state == .closing { finishClosing() }
                return
            }
            toLocal.consume(count)
            bytesToLocal &+= UInt64(count)
            lastProgress = loop.now
            if congested && toLocal.readableCount <= lowWater { endCongestion() }
            flushToLocal()
        }
    }

    // MARK: Local → tunnel

    private func startReading() {
        guard let stream else { return }
        stream.allocate = { [self] in
            guard pendingFrame == 0, !readEnded,
                  let r = toTunnel.reserve(headroom: LocalLink.headroom, tailroom: LocalLink.tailroom, maximumPayload: maximumPayload)
            else { return UnsafeMutableRawBufferPointer(start: nil, count: 0) }
            reservation = r
            return r.payload
        }
        stream.onRead = { [self] result in
            switch result {
            case .success(let n): readArrived(n)
            case .failure(let error):
                if error.code != UVError.endOfFile { logger.debug("local connection \(id): \(error)") }
                readFailed()
            }
        }
        stream.startReading()
    }

    private func readArrived(_ n: Int) {
        guard let r = reservation, state == .open else { return }
        reservation = nil
        // A connection's stream, service and id never change, so the DATA fields are asked for
        // once; every path that takes the connection out of its stream also closes this link.
        if dataHeader == nil { dataHeader = owner?.dataHeader(for: self) }
        guard let header = dataHeader, let tunnel = owner?.tunnel else {
            // No stream or no tunnel any more: the bytes have nowhere to go; the link is being
            // closed by the session.
            return
        }
        // The sessions never adopt a longer service id; should one slip through, the tail would
        // be written past the reservation, so the connection ends instead.
        guard header.tailLength <= LocalLink.tailroom else {
            logger.error("local connection \(id): the DATA fields need \(header.tailLength) bytes behind the payload, more than the \(LocalLink.tailroom) reserved: closing it")
            readFailed()
            return
        }
        let payload = r.payload.baseAddress!
        let tunnelHead: Int
        do {
            tunnelHead = try TunnelFrame.frameInPlace(header, payload: payload, payloadLength: n)
        } catch {
            logger.error("cannot frame \(n) bytes from local connection \(id): \(error)")
            return
        }
        bytesFromLocal &+= UInt64(n)
        let messageLength = tunnelHead + n + header.tailLength
        let messageStart = payload - tunnelHead
        let key = tunnel.nextMaskingKey()
        let webSocketHead = WebSocketFrameEncoder.writeHeader(
            opcode: .binary, payloadLength: messageLength, maskingKey: key, endingAt: messageStart)
        key.apply(to: UnsafeMutableRawBufferPointer(start: messageStart, count: messageLength))
        toTunnel.commit(r, headerLength: webSocketHead + tunnelHead, payloadLength: n, trailerLength: header.tailLength)
        pendingFrame = webSocketHead + messageLength
        if logger.enabled(.trace) {
            logger.trace("sending DATA stream \(header.streamId) connection \(header.connectionId) payload \(n) bytes from local connection \(id)")
        }
        sendPendingFrame()
    }

    /// Hands the pending frame to the tunnel; if it does not fit, stops reading until
    /// `tunnelWritable` calls back.
    func sendPendingFrame() {
        guard pendingFrame > 0 else { return }
        guard let tunnel = owner?.tunnel else {
            toTunnel.removeAll()
            pendingFrame = 0
            return
        }
        let span = toTunnel.readableSpans.0
        if tunnel.writeFrame(UnsafeRawBufferPointer(rebasing: span[0..<pendingFrame])) {
            toTunnel.consume(pendingFrame)
            pendingFrame = 0
            if readEnded {
                owner?.linkEnded(self)
            } else if state == .open {
                stream?.startReading()
            }
        } else {
            stream?.stopReading()
            owner?.linkWaitsForTunnel(self)
        }
    }

    var hasPendingFrame: Bool { pendingFrame > 0 }

    private func readFailed() {
        guard !readEnded else { return }
        readEnded = true
        stream?.stopReading()
        // Bytes already read go out first; the reset follows them.
        if pendingFrame == 0 && state == .open { owner?.linkEnded(self) }
    }

    // MARK: Closing

    /// Writes what is queued toward the local socket, then closes. A link that never connected
    /// closes at once (its bytes had nowhere to go; the peer was told with a reset).
    func closeAfterFlush() {
        switch state {
        case .closing, .closed:
            return
        case .idle, .connecting:
            finishClosing()
        case .open:
            state = .closing
            lastProgress = loop.now
            stream?.stopReading()
            readEnded = true
            pendingFrame = 0
            endCongestion()
            flushToLocal()
        }
    }

    /// Ends the connection at once: queued bytes (both ways) are dropped and the socket is
    /// closed with a TCP reset, so the local application sees ECONNRESET, never a clean end of a
    /// cut-off transfer. Used when the tunnel is lost, a stall deadline passes, or the proxy
    /// stops while a local application is not reading.
    func reset() {
        guard state != .closed else { return }
        state = .closed
        retryTimer?.close()
        retryTimer = nil
        toLocal.removeAll()
        toTunnel.removeAll()
        pendingFrame = 0
        readEnded = true
        endCongestion()
        let s = stream
        stream = nil
        if let s, !s.isClosing {
            s.closeWithReset { [self] in done() }
        } else {
            done()
        }
    }

    private func endCongestion() {
        guard congested else { return }
        congested = false
        owner?.linkCongestion(self, congested: false)
    }

    private func finishClosing() {
        guard state != .closed else { return }
        state = .closed
        retryTimer?.close()
        retryTimer = nil
        endCongestion()
        let s = stream
        stream = nil
        if let s {
            if s.isClosing {
                done()
            } else {
                // FIN first, so the local service sees a clean end of stream, then close.
                s.shutdown { _ in s.close { [self] in done() } }
            }
        } else {
            done()
        }
    }

    private func done() {
        let o = owner
        owner = nil
        o?.linkClosed(self)
    }
}
