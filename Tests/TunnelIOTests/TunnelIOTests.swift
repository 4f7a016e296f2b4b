import Testing
import TunnelCore
@testable import TunnelIO

/// Runs the loop until `done()` or until `limit` iterations pass; a watchdog timer guarantees
/// iterations keep coming even when no I/O happens, so a hung test fails instead of blocking.
func run(_ loop: EventLoop, until done: () -> Bool, timeoutMilliseconds: UInt64 = 10_000) {
    let watchdog = Timer(loop: loop)
    var expired = false
    watchdog.start(after: timeoutMilliseconds) { expired = true }
    while !done() && !expired { loop.runOnce() }
    watchdog.close()
    #expect(!expired, "timed out waiting for the loop")
}

/// Every test ends here: all handles closed, the loop closes cleanly.
func finish(_ loop: EventLoop) {
    #expect(loop.close(), "the loop still had live handles: \(loop.liveHandleCount)")
}

@Suite("libuv layer", .serialized)
struct TunnelIOTests {
    @Test func echoOverLoopback() throws {
        let loop = try EventLoop()
        let listener = Listener(loop: loop)
        var server: SocketStream? = nil
        let serverRing = try RingBuffer(minimumCapacity: 4096)
        try listener.listen(on: SocketAddress(ip: "127.0.0.1", port: 0)!) { client in
            server = client
            client.allocate = { serverRing.writableSpans.0 }
            client.onRead = { result in
                switch result {
                case .success(let n):
                    serverRing.commit(n)
                    // Echo straight from the ring's readable spans, consumed on completion.
                    let (a, b) = serverRing.readableSpans
                    let count = a.count + b.count
                    client.write(UnsafeRawBufferPointer(a), UnsafeRawBufferPointer(b)) { error in
                        #expect(error == nil)
                        serverRing.consume(count)
                    }
                case .failure:
                    client.close()
                }
            }
            client.startReading()
        }
        let port = try #require(listener.localAddress).port
        #expect(port != 0)

        let client = SocketStream(loop: loop, kind: .tcp)
        var connected = false
        client.connect(to: SocketAddress(ip: "127.0.0.1", port: port)!) { error in
            #expect(error == nil)
            connected = true
        }
        run(loop, until: { connected })
        client.setNoDelay()

        let message = (0..<3000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        var received: [UInt8] = []
        let clientRing = try RingBuffer(minimumCapacity: 1024)
        client.allocate = { clientRing.writableSpans.0 }
        client.onRead = { result in
            if case .success(let n) = result {
                clientRing.commit(n)
                var chunk = [UInt8](repeating: 0, count: clientRing.readableCount)
                _ = chunk.withUnsafeMutableBytes { clientRing.read(into: $0) }
                received += chunk
            }
        }
        client.startReading()
        message.withUnsafeBytes { view in
            client.write(view) { error in #expect(error == nil) }
            run(loop, until: { received.count == message.count })
        }
        #expect(received == message)

        // Our FIN reaches the server as end of file; it closes; we see end of file too.
        var clientSawEnd = false
        client.onRead = { result in
            if case .failure(let error) = result {
                #expect(error.code == UVError.endOfFile)
                clientSawEnd = true
            }
        }
        client.shutdown { error in #expect(error == nil) }
        run(loop, until: { clientSawEnd })
        client.close()
        server?.close()
        listener.close()
        finish(loop)
    }

    // A cut-off transfer must not look complete: closeWithReset gives the peer ECONNRESET where
    // close() (or shutdown) would give it a clean end of file.
    @Test(arguments: [true, false])
    func closeWithResetIsSeenAsAResetNotAnEnd(reset: Bool) throws {
        let loop = try EventLoop()
        let listener = Listener(loop: loop)
        var server: SocketStream? = nil
        try listener.listen(on: SocketAddress(ip: "127.0.0.1", port: 0)!) { server = $0 }
        let port = try #require(listener.localAddress).port
        let client = SocketStream(loop: loop, kind: .tcp)
        var connected = false
        client.connect(to: SocketAddress(ip: "127.0.0.1", port: port)!) { error in
            #expect(error == nil)
            connected = true
        }
        run(loop, until: { connected && server != nil })
        #expect(client.setKeepAlive(idle: 30, interval: 10, count: 3) == nil)
        let ring = try RingBuffer(minimumCapacity: 4096)
        var outcome: Int32? = nil
        client.allocate = { ring.writableSpans.0 }
        client.onRead = { result in
            switch result {
            case .success(let n): ring.commit(n); ring.consume(n)
            case .failure(let error): outcome = error.code
            }
        }
        client.startReading()
        if reset { server?.closeWithReset() } else { server?.close() }
        run(loop, until: { outcome != nil })
        #expect(outcome == (reset ? UVError.connectionReset : UVError.endOfFile))
        client.close()
        listener.close()
        finish(loop)
    }

    @Test func loopbackAddresses() {
        #expect(SocketAddress(ip: "127.0.0.1", port: 1)!.isLoopback)
        #expect(SocketAddress(ip: "127.3.2.1", port: 1)!.isLoopback)
        #expect(SocketAddress(ip: "::1", port: 1)!.isLoopback)
        #expect(!SocketAddress(ip: "0.0.0.0", port: 1)!.isLoopback)
        #expect(!SocketAddress(ip: "10.0.0.1", port: 1)!.isLoopback)
        #expect(!SocketAddress(ip: "::", port: 1)!.isLoopback)
    }

    @Test func refusedConnectReportsTheError() throws {
        let loop = try EventLoop()
        // Bind a port, then free it, so that nothing listens there.
        let probe = Listener(loop: loop)
        try probe.listen(on: SocketAddress(ip: "127.0.0.1", port: 0)!) { _ in }
        let port = try #require(probe.localAddress).port
        probe.close()
        loop.runOnce(wait: false)

        let stream = SocketStream(loop: loop, kind: .tcp)
        var failure: UVError? = nil
        stream.connect(to: SocketAddress(ip: "127.0.0.1", port: port)!) { error in failure = error }
        run(loop, until: { failure != nil })
        #expect(failure?.name == "ECONNREFUSED")
        #expect(failure?.description.contains("refused") == true)
        stream.close()
        finish(loop)
    }

    @Test func unixSocketConnectFailureNamesThePath() throws {
        let loop = try EventLoop()
        let stream = SocketStream(loop: loop, kind: .unixSocket)
        var failure: UVError? = nil
        stream.connect(toPath: "/nonexistent/localproxy-test.sock") { error in failure = error }
        run(loop, until: { failure != nil })
        #expect(failure?.name == "ENOENT")
        stream.close()
        finish(loop)
    }

    @Test func timersFireInOrderAndRepeat() throws {
        let loop = try EventLoop()
        var events: [String] = []
        let a = Timer(loop: loop)
        let b = Timer(loop: loop)
        var ticks = 0
        b.start(after: 30) { events.append("b") }
        a.start(after: 1, repeat: 5) {
            ticks += 1
            if ticks == 3 {
                events.append("a3")
                a.stop()
            }
        }
        run(loop, until: { events.count == 2 })
        #expect(events == ["a3", "b"])
        a.close()
        b.close()
        finish(loop)
    }

    @Test func resolvesLocalhostAsynchronously() throws {
        let loop = try EventLoop()
        var result: Result<[SocketAddress], UVError>? = nil
        let resolver = Resolver()
        resolver.resolve(loop: loop, host: "localhost", port: 443) { result = $0 }
        run(loop, until: { result != nil })
        let addresses = try #require(try? result?.get())
        #expect(addresses.contains { $0.description == "127.0.0.1:443" || $0.description == "[::1]:443" })

        var failed: UVError? = nil
        resolver.resolve(loop: loop, host: "no-such-host.invalid", port: 443) { r in
            if case .failure(let e) = r { failed = e }
        }
        run(loop, until: { failed != nil })
        #expect(failed?.description.contains("no-such-host.invalid") == true)
        finish(loop)
    }

    @Test func numericAddressesParse() {
        #expect(SocketAddress(ip: "127.0.0.1", port: 22)?.description == "127.0.0.1:22")
        #expect(SocketAddress(ip: "::1", port: 8443)?.description == "[::1]:8443")
        #expect(SocketAddress(ip: "localhost", port: 1) == nil)
    }

    @Test func closingWithAPendingConnectLeavesNoHandle() throws {
        let loop = try EventLoop()
        let listener = Listener(loop: loop)
        try listener.listen(on: SocketAddress(ip: "127.0.0.1", port: 0)!) { accepted in accepted.close() }
        let port = try #require(listener.localAddress).port
        let stream = SocketStream(loop: loop, kind: .tcp)
        var called = false
        // Closed before the loop runs, so the connect is still pending when the close starts.
        stream.connect(to: SocketAddress(ip: "127.0.0.1", port: port)!) { _ in called = true }
        var closed = false
        stream.close { closed = true }
        run(loop, until: { closed })
        #expect(!called, "no connect result after close")
        listener.close()
        finish(loop)
    }
}
