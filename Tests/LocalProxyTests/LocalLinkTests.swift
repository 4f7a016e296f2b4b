// LocalLink against a real local socket (a listener in the test standing for the local service,
// or for the local client): what the tunnel delivers reaches the socket in order, a full queue
// holds the tunnel back and lets it go, the local side's end is reported only after its bytes
// went to the tunnel, a reset is a reset, and the stall clock runs only while the tunnel waits.
// Events are awaited with deadlines, never with sleeps; each test ends with no live handle.
import Testing
import TunnelCore
import TunnelIO
import TunnelTLS
@testable import LocalProxy

/// What a link reports to its owner, recorded in order.
private final class LinkOwner: LocalLinkOwner {
    enum Event: Equatable {
        case connected, connectFailed, retryDue, ended, broken, closed, waitsForTunnel
        case congestion(Bool)
    }

    var events: [Event] = []
    var connectFailure: String? = nil
    var tunnel: TunnelConnection? = nil
    var header: TunnelMessage? = nil
    /// Whether a frame of the link still waited for the tunnel when its end was reported.
    var pendingFrameAtEnd: Bool? = nil

    func linkConnected(_ link: LocalLink) { events.append(.connected) }
    func linkConnectFailed(_ link: LocalLink, reason: String) {
        connectFailure = reason
        events.append(.connectFailed)
    }
    func linkRetryDue(_ link: LocalLink) { events.append(.retryDue) }
    func linkEnded(_ link: LocalLink) {
        pendingFrameAtEnd = link.hasPendingFrame
        events.append(.ended)
    }
    func linkBroken(_ link: LocalLink) { events.append(.broken) }
    func linkClosed(_ link: LocalLink) { events.append(.closed) }
    func linkCongestion(_ link: LocalLink, congested: Bool) { events.append(.congestion(congested)) }
    func linkWaitsForTunnel(_ link: LocalLink) { events.append(.waitsForTunnel) }
    func dataHeader(for link: LocalLink) -> TunnelMessage? { header }
}

/// The other end of the link's socket: accepts one connection and reads everything it is sent.
private final class LocalPeer {
    let listener: Listener
    let port: UInt16
    private(set) var stream: SocketStream? = nil
    private(set) var received: [UInt8] = []
    /// How reading ended (EOF or an error).
    private(set) var readEnd: UVError? = nil
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)

    init(loop: EventLoop) throws {
        listener = Listener(loop: loop)
        var accepted: (SocketStream) -> Void = { $0.close() }
        try listener.listen(on: SocketAddress(ip: "127.0.0.1", port: 0)!) { accepted($0) }
        port = listener.localAddress?.port ?? 0
        accepted = { [unowned self] s in
            stream = s
            s.allocate = { [unowned self] in buffer }
            s.onRead = { [unowned self] result in
                switch result {
                case .success(let n): received += buffer[0..<n]
                case .failure(let error): readEnd = error
                }
            }
            s.startReading()
        }
    }

    deinit { buffer.deallocate() }

    var text: String { String(decoding: received, as: UTF8.self) }

    func write(_ text: String) {
        let bytes = Array(text.utf8)
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 1)
        copy.copyBytes(from: bytes)
        stream?.write(UnsafeRawBufferPointer(copy)) { error in
            #expect(error == nil)
            copy.deallocate()
        }
    }

    /// Ends the sending direction (FIN): the half-close of a local client.
    func shutdown() {
        stream?.shutdown { error in #expect(error == nil) }
    }

    func close() {
        listener.close()
        stream?.close()
    }
}

private func makeLink(_ loop: EventLoop, _ owner: LinkOwner, id: UInt32 = 7) throws -> LocalLink {
    try LocalLink(id: LocalConnectionID(id), owner: owner, loop: loop, resolver: Resolver(), logger: Logger(verbosity: 0) { _ in },
                  maximumPayload: 64 * 1024)
}

/// A link connected to a fresh peer.
private func connectedLink(_ loop: EventLoop, _ owner: LinkOwner) throws -> (LocalLink, LocalPeer) {
    let peer = try LocalPeer(loop: loop)
    let link = try makeLink(loop, owner)
    link.connect(.tcp(host: "127.0.0.1", port: peer.port))
    run(loop, until: { owner.events == [.connected] && peer.stream != nil }, "the connection")
    return (link, peer)
}

private func enqueue(_ link: LocalLink, _ bytes: [UInt8]) {
    bytes.withUnsafeBytes { link.enqueue($0) }
}

@Suite("Local link", .serialized)
struct LocalLinkTests {
    @Test func deliversWhatIsQueuedInOrderThenEndsWithAFin() throws {
        let loop = try EventLoop()
        let owner = LinkOwner()
        let peer = try LocalPeer(loop: loop)
        let link = try makeLink(loop, owner)
        link.connect(.tcp(host: "127.0.0.1", port: peer.port))
        // Queued while connecting: written once connected.
        enqueue(link, Array("early, ".utf8))
        run(loop, until: { owner.events == [.connected] }, "the connection")
        enqueue(link, Array("then late".utf8))
        run(loop, until: { peer.received.count == 16 }, "the bytes")
        #expect(peer.text == "early, then late")
        #expect(link.bytesToLocal == 16)
        #expect(link.queuedTowardLocal == 0)
        link.closeAfterFlush()
        run(loop, until: { owner.events.last == .closed && peer.readEnd != nil }, "the close")
        #expect(peer.readEnd?.code == UVError.endOfFile, "a clean end, not a reset")
        #expect(owner.events == [.connected, .closed])
        // A closed link takes nothing more.
        enqueue(link, [1, 2, 3])
        #expect(link.queuedTowardLocal == 0)
        peer.close()
        #expect(loop.close(), "live handles: \(loop.liveHandleCount)")
    }

    @Test func connectFailureIsReportedAndARetryCanSucceed() throws {
        let loop = try EventLoop()
        let owner = LinkOwner()
        // A port nobody listens on: take one, then let it go.
        let probe = Listener(loop: loop)
        try probe.listen(on: SocketAddress(ip: "127.0.0.1", port: 0)!) { $0.close() }
        let deadPort = try #require(probe.localAddress).port
        probe.close()

        let link = try makeLink(loop, owner)
        link.connect(.tcp(host: "127.0.0.1", port: deadPort))
        run(loop, until: { owner.events == [.connectFailed] }, "the failure")
        #expect(owner.connectFailure?.contains("ECONNREFUSED") == true, "\(owner.connectFailure ?? "")")
        link.scheduleRetry(after: 1)
        run(loop, until: { owner.events == [.connectFailed, .retryDue] }, "the retry timer")
        let peer = try LocalPeer(loop: loop)
        link.connect(.tcp(host: "127.0.0.1", port: peer.port))
        run(loop, until: { owner.events.last == .connected }, "the second attempt")
        link.closeAfterFlush()
        run(loop, until: { owner.events.last == .closed }, "the close")
        #expect(owner.events == [.connectFailed, .retryDue, .connected, .closed])
        peer.close()
        #expect(loop.close(), "live handles: \(loop.liveHandleCount)")
    }

    /// Past the high-water mark the link holds the tunnel back; the stall clock runs from that
    /// moment; once the local side took enough, the tunnel may go on and the clock stops.
    @Test func fullQueueHoldsTheTunnelBackUntilItDrains() throws {
        let loop = try EventLoop()
        let owner = LinkOwner()
        let (link, peer) = try connectedLink(loop, owner)
        let chunk = [UInt8](repeating: 0x61, count: 40_000)
        // The first write is in flight until the loop runs again; its bytes stay queued.
        enqueue(link, chunk)
        #expect(owner.events == [.connected])
        #expect(link.stalledMilliseconds(now: loop.now + 5000) == 0, "not congested: no stall")
        enqueue(link, chunk)
        #expect(owner.events == [.connected, .congestion(true)])
        let since = loop.now
        #expect(link.stalledMilliseconds(now: since + 1234) == 1234)
        #expect(link.stalledMilliseconds(now: since) == 0)
        run(loop, until: { owner.events.last == .congestion(false) }, "the queue to drain")
        run(loop, until: { peer.received.count == 80_000 }, "every byte")
        #expect(link.stalledMilliseconds(now: loop.now + 1234) == 0)
        #expect(owner.events == [.connected, .congestion(true), .congestion(false)])
        link.closeAfterFlush()
        run(loop, until: { owner.events.last == .closed }, "the close")
        peer.close()
        #expect(loop.close(), "live handles: \(loop.liveHandleCount)")
    }

    /// A closing link with bytes still to write is stalled from the moment it began closing.
    @Test func closingWithBytesLeftCountsAsWaiting() throws {
        let loop = try EventLoop()
        let owner = LinkOwner()
        let (link, peer) = try connectedLink(loop, owner)
        enqueue(link, [UInt8](repeating: 0x62, count: 30_000))
        link.closeAfterFlush()
        let since = loop.now
        #expect(link.stalledMilliseconds(now: since + 700) == 700)
        run(loop, until: { owner.events.last == .closed && peer.readEnd != nil }, "the close")
        #expect(peer.received.count == 30_000, "what was queued is written before the FIN")
        #expect(peer.readEnd?.code == UVError.endOfFile)
        peer.close()
        #expect(loop.close(), "live handles: \(loop.liveHandleCount)")
    }

    /// A reset drops what is queued, ends congestion, and the local side reads ECONNRESET.
    @Test func resetDropsTheQueueAndResetsTheSocket() throws {
        let loop = try EventLoop()
        let owner = LinkOwner()
        let (link, peer) = try connectedLink(loop, owner)
        enqueue(link, [UInt8](repeating: 0x63, count: 40_000))
        enqueue(link, [UInt8](repeating: 0x63, count: 40_000))
        #expect(owner.events == [.connected, .congestion(true)])
        link.reset()
        #expect(link.queuedTowardLocal == 0)
        run(loop, until: { owner.events.last == .closed && peer.readEnd != nil }, "the reset")
        #expect(owner.events == [.connected, .congestion(true), .congestion(false), .closed])
        #expect(peer.received.count <= 40_000, "the queued bytes that were not written yet are dropped")
        #expect(link.stalledMilliseconds(now: loop.now + 1000) == 0)
        peer.close()
        #expect(loop.close(), "live handles: \(loop.liveHandleCount)")
    }

    /// The local side reads ECONNRESET, not the clean end of a complete transfer.
    @Test func resetIsSeenAsAReset() throws {
        let loop = try EventLoop()
        let owner = LinkOwner()
        let (link, peer) = try connectedLink(loop, owner)
        link.reset()
        run(loop, until: { owner.events.last == .closed && peer.readEnd != nil }, "the reset")
        #expect(owner.events == [.connected, .closed])
        #expect(peer.readEnd?.code == UVError.connectionReset, "\(String(describing: peer.readEnd))")
        peer.close()
        #expect(loop.close(), "live handles: \(loop.liveHandleCount)")
    }

    /// Bytes the local side sends become DATA frames of the link's stream; its FIN is reported
    /// only once they went to the tunnel, and the other direction keeps working (a half-close).
    @Test func localBytesGoToTheTunnelAndTheHalfCloseFollowsThem() throws {
        let bed = try TunnelTestBed()
        defer { bed.finish() }
        let (connection, _, server) = try bed.openConnection()
        let owner = LinkOwner()
        owner.tunnel = connection
        owner.header = TunnelMessage(type: .data, streamId: 5, serviceId: Array("SSH".utf8), connectionId: 3)
        let (link, peer) = try connectedLink(bed.loop, owner)

        peer.write("from the local side")
        run(bed.loop, until: { server.messages.count == 1 }, "the DATA message")
        #expect(server.messages == [Received(.data, stream: 5, service: "SSH", connection: 3, payload: Array("from the local side".utf8))])
        #expect(link.bytesFromLocal == 19)

        peer.write("last words")
        peer.shutdown()
        run(bed.loop, until: { owner.events.contains(.ended) }, "the end of the local side")
        #expect(owner.pendingFrameAtEnd == false, "the last bytes were handed to the tunnel before the end was reported")
        run(bed.loop, until: { server.messages.count == 2 }, "the last DATA message")
        #expect(server.messages.last?.payload == Array("last words".utf8))

        // Half-closed: the answer still reaches the local side.
        enqueue(link, Array("the answer".utf8))
        run(bed.loop, until: { peer.text == "the answer" }, "the answer")
        link.closeAfterFlush()
        run(bed.loop, until: { owner.events.last == .closed && peer.readEnd != nil }, "the close")
        #expect(owner.events == [.connected, .ended, .closed])
        peer.close()
    }
}
