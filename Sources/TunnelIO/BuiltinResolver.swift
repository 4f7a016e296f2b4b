import CLibUV
import TunnelCore

/// One lookup by the built-in resolver: the I/O half of `DNSLookup`. It reads the two files
/// (synchronously: they are small local files, read once per lookup so that changes are seen),
/// answers from /etc/hosts when the name is there, else runs the lookup's tries: a fresh UDP
/// socket per try (so a fresh source port), replies accepted only from the try's nameserver,
/// TCP exchanges for truncated answers, one timer.
///
/// Lifetime: the timer's and sockets' callbacks hold the resolver; finishing closes them all,
/// so it goes away once libuv has let go of its handles.
final class BuiltinResolver {
    private let loop: EventLoop
    private let host: String
    private let port: UInt16
    private let servers: [SocketAddress]
    private var lookup: DNSLookup
    private var completion: LookupCompletion?
    private let timer: Timer
    private var datagram: Datagram? = nil
    private var exchanges: [DNSOverTCP] = []
    /// Counts tries, so that callbacks of an earlier try's sockets are recognised and dropped.
    private var generation = 0
    /// The resolver that lists this lookup among those in flight (`Resolver.cancelAll`), until
    /// the lookup finishes or is cancelled.
    private var registry: Resolver? = nil

    private init(loop: EventLoop, host: String, port: UInt16, servers: [SocketAddress], lookup: DNSLookup,
                 completion: LookupCompletion) {
        self.loop = loop
        self.host = host
        self.port = port
        self.servers = servers
        self.lookup = lookup
        self.completion = completion
        timer = Timer(loop: loop)
    }

    /// Starts a lookup; `registry`, when given, lists it among its lookups in flight.
    static func resolve(loop: EventLoop, host: String, port: UInt16, settings: BuiltinResolverSettings, registry: Resolver? = nil,
                        _ completion: LookupCompletion) {
        let hosts = HostsFile(parsing: readResolverFile(settings.hostsPath, limit: BuiltinResolverSettings.hostsFileLimit) ?? [])
        let listed = hosts.addresses(for: host)
        if !listed.isEmpty {
            completion.call(.success(listed.map { SocketAddress($0, port: port) }))
            return
        }
        let name: DNSName
        do throws(DNSError) {
            name = try DNSName(host)
        } catch {
            completion.call(.failure(UVError(Int32(UV_EAI_NONAME.rawValue), "resolving \(host): \(DNSLookupError.invalidName(error))")))
            return
        }
        let configuration = readResolverFile(settings.resolvConfPath, limit: BuiltinResolverSettings.resolvConfLimit)
            .map { ResolverConfiguration(parsing: $0) } ?? ResolverConfiguration()
        let servers = configuration.nameservers.map { SocketAddress($0, port: settings.nameserverPort) }
        let lookup = DNSLookup(name: name, serverCount: servers.count, attempts: configuration.attempts,
                               timeoutMilliseconds: settings.timeoutMilliseconds ?? UInt64(configuration.timeoutSeconds) * 1000,
                               nextID: randomQueryID)
        let resolver = BuiltinResolver(loop: loop, host: host, port: port, servers: servers, lookup: lookup, completion: completion)
        if let registry {
            resolver.registry = registry
            registry.inFlight.append(resolver)
        }
        let first = resolver.lookup.start()
        resolver.perform(first)
    }

    /// Ends the lookup without calling its completion: its sockets and timer are closed.
    func cancel() {
        // Closing the socket completes its pending sends with ECANCELED: a new generation makes
        // those callbacks stale, or they would start the next try on a new socket.
        generation += 1
        closeTransports()
        timer.close()
        completion = nil
        leaveRegistry()
    }

    private func leaveRegistry() {
        registry?.inFlight.removeAll { $0 === self }
        registry = nil
    }

    /// Carries out what the lookup asks for.
    private func perform(_ action: DNSLookup.Action?) {
        guard let action else { return }
        switch action {
        case .startTry(let server, let queries, let timeout):
            startTry(servers[server], queries, timeout)
        case .queryOverTCP(let server, let query):
            let current = generation
            let id = UInt16(query[0]) << 8 | UInt16(query[1])
            let exchange = DNSOverTCP(loop: loop, server: servers[server], query: query)
            exchanges.append(exchange)
            exchange.start(onReply: { [self] reply in
                guard current == generation else { return }
                perform(lookup.receivedOverTCP(reply))
            }, onFailure: { [self] reason in
                guard current == generation else { return }
                perform(lookup.tcpFailed(id: id, reason: reason))
            })
        case .finished(let result):
            closeTransports()
            timer.close()
            leaveRegistry()
            let done = completion
            completion = nil
            switch result {
            case .success(let addresses):
                done?.call(.success(addresses.map { SocketAddress($0, port: port) }))
            case .failure(let error):
                var list = ""
                for s in servers { list += list.isEmpty ? "\(s)" : ", \(s)" }
                done?.call(.failure(UVError(Self.code(for: error), "resolving \(host): \(error) (built-in resolver; nameservers \(list))")))
            }
        }
    }

    private func startTry(_ server: SocketAddress, _ queries: [[UInt8]], _ timeout: UInt64) {
        closeTransports()
        generation += 1
        let current = generation
        let socket = Datagram(loop: loop)
        datagram = socket
        timer.start(after: timeout) { [self] in perform(lookup.timerFired()) }
        do throws(UVError) {
            // Bound explicitly to the wildcard of the server's family: an unbound socket would be
            // bound to IPv4 by the first receive and could not reach an IPv6 server.
            try socket.bind(to: server.isIPv6 ? SocketAddress(ip: "::", port: 0)! : SocketAddress(ip: "0.0.0.0", port: 0)!)
            try socket.startReceiving { [self] reply, sender in
                // Only the try's server may answer; anything else is dropped unread.
                guard current == generation, sender.isSameEndpoint(as: server) else { return }
                perform(lookup.receivedDatagram(reply))
            }
        } catch {
            perform(lookup.sendFailed(reason: "\(error)"))
            return
        }
        for query in queries {
            socket.send(query, to: server) { [self] error in
                guard let error, current == generation else { return }
                perform(lookup.sendFailed(reason: "\(error)"))
            }
            // A failed send may already have moved the lookup on.
            if current != generation { return }
        }
    }

    private func closeTransports() {
        timer.stop()
        datagram?.close()
        datagram = nil
        for e in exchanges { e.close() }
        exchanges.removeAll()
    }

    /// The getaddrinfo error closest to each outcome, so callers see familiar codes.
    static func code(for error: DNSLookupError) -> Int32 {
        switch error {
        case .invalidName, .nonexistentDomain: return Int32(UV_EAI_NONAME.rawValue)
        case .noAddress: return Int32(UV_EAI_NODATA.rawValue)
        case .noAnswer, .transport: return Int32(UV_EAI_AGAIN.rawValue)
        case .serverFailed(let e): return e == .serverFailure ? Int32(UV_EAI_AGAIN.rawValue) : Int32(UV_EAI_FAIL.rawValue)
        }
    }
}

/// A random query id from the system's generator (getrandom(2) through libuv): ids must not
/// be guessable by someone trying to forge answers.
func randomQueryID() -> UInt16 {
    var id: UInt16 = 0
    let status = withUnsafeMutableBytes(of: &id) { uv_random(nil, nil, $0.baseAddress, 2, 0, nil) }
    // Without system entropy the process cannot do TLS either.
    precondition(status == 0, "the system random generator failed (\(status))")
    return id
}

/// Reads a resolver file: nil if it cannot be opened or read; a file longer than `limit` is
/// cut after its last whole line within the limit, so no line is parsed in part.
func readResolverFile(_ path: String, limit: Int) -> [UInt8]? {
    guard let (read, complete) = try? readSmallFile(path, limit: limit) else { return nil }
    var data = read
    if !complete, let lastLine = data.lastIndex(of: 0x0A) { data.removeSubrange((lastLine + 1)...) }
    return data
}

// MARK: TCP

/// One query over TCP (RFC 1035 §4.2.2: each message behind a 2-byte length): connect, write,
/// read the length, then exactly that many bytes into a buffer of that size.
final class DNSOverTCP {
    private let stream: SocketStream
    private let server: SocketAddress
    private let outgoing: UnsafeMutableRawBufferPointer
    private let prefix = UnsafeMutableRawBufferPointer.allocate(byteCount: 2, alignment: 2)
    private var body: UnsafeMutableRawBufferPointer? = nil
    private var received = 0
    private var onReply: ((UnsafeRawBufferPointer) -> Void)? = nil
    private var onFailure: ((String) -> Void)? = nil

    init(loop: EventLoop, server: SocketAddress, query: [UInt8]) {
        self.server = server
        stream = SocketStream(loop: loop, kind: .tcp)
        outgoing = .allocate(byteCount: query.count + 2, alignment: 2)
        outgoing[0] = UInt8(query.count >> 8)
        outgoing[1] = UInt8(truncatingIfNeeded: query.count)
        UnsafeMutableRawBufferPointer(rebasing: outgoing[2...]).copyBytes(from: query)
    }

    deinit {
        outgoing.deallocate()
        prefix.deallocate()
        body?.deallocate()
    }

    func start(onReply: @escaping (UnsafeRawBufferPointer) -> Void, onFailure: @escaping (String) -> Void) {
        self.onReply = onReply
        self.onFailure = onFailure
        stream.connect(to: server) { [self] error in
            if let error {
                fail("TCP to \(server): \(error)")
                return
            }
            stream.write(UnsafeRawBufferPointer(outgoing)) { [self] error in
                if let error { fail("TCP to \(server): \(error)") }
            }
            stream.allocate = { [self] in nextRegion() }
            stream.onRead = { [self] result in
                switch result {
                case .success(let n): got(n)
                case .failure(let error):
                    fail(error.code == UVError.endOfFile ? "\(server) closed the TCP connection before the whole answer"
                                                         : "TCP to \(server): \(error)")
                }
            }
            stream.startReading()
        }
    }

    func close() {
        onReply = nil
        onFailure = nil
        stream.close()
    }

    private func nextRegion() -> UnsafeMutableRawBufferPointer {
        if received < 2 { return UnsafeMutableRawBufferPointer(rebasing: prefix[received...]) }
        guard let body else { return UnsafeMutableRawBufferPointer(start: nil, count: 0) }
        return UnsafeMutableRawBufferPointer(rebasing: body[(received - 2)...])
    }

    private func got(_ n: Int) {
        received += n
        if received == 2 {
            let length = Int(prefix[0]) << 8 | Int(prefix[1])
            guard length > 0 else {
                fail("\(server) sent an empty answer over TCP")
                return
            }
            body = .allocate(byteCount: length, alignment: 2)
        }
        if let body, received == 2 + body.count {
            let done = onReply
            close()
            done?(UnsafeRawBufferPointer(body))
        }
    }

    private func fail(_ reason: String) {
        let report = onFailure
        close()
        report?(reason)
    }
}
