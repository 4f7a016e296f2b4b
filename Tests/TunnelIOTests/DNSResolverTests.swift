// The built-in resolver on a real libuv loop, against a small DNS server on 127.0.0.1 that runs
// on the same loop (UDP, and TCP for truncated answers). Each test ends with no live handle.
import Foundation
import Testing
import TunnelCore
@testable import TunnelIO

/// A DNS server for the tests: records each query and answers through `answer`, which may send
/// any number of datagrams (or none) with `send`, or from the `spoofer` socket.
final class TestDNSServer {
    struct Query: Equatable {
        let id: UInt16
        let name: String
        let type: UInt16
    }

    let socket: Datagram
    /// Another socket on 127.0.0.1, for replies from the wrong source port.
    let spoofer: Datagram
    let port: UInt16
    private(set) var queries: [Query] = []
    var answer: (_ query: [UInt8], _ from: SocketAddress, _ server: TestDNSServer) -> Void = { _, _, _ in }
    private var listener: Listener? = nil
    private var tcpClients: [SocketStream] = []

    init(loop: EventLoop) throws {
        socket = Datagram(loop: loop)
        spoofer = Datagram(loop: loop)
        try socket.bind(to: SocketAddress(ip: "127.0.0.1", port: 0)!)
        try spoofer.bind(to: SocketAddress(ip: "127.0.0.1", port: 0)!)
        port = socket.localAddress!.port
        try socket.startReceiving { [self] bytes, sender in
            let query = Array(bytes)
            queries.append(TestDNSServer.describe(query))
            answer(query, sender, self)
        }
    }

    func send(_ reply: [UInt8], to: SocketAddress) {
        socket.send(reply, to: to) { error in #expect(error == nil) }
    }

    func spoof(_ reply: [UInt8], to: SocketAddress) {
        spoofer.send(reply, to: to) { error in #expect(error == nil) }
    }

    /// Also answers over TCP on the same port number, with `tcpAnswer` for each query.
    func serveTCP(loop: EventLoop, _ tcpAnswer: @escaping ([UInt8]) -> [UInt8]) throws {
        let l = Listener(loop: loop)
        listener = l
        try l.listen(on: SocketAddress(ip: "127.0.0.1", port: port)!) { [self] client in
            tcpClients.append(client)
            var received: [UInt8] = []
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 1)
            var reply: UnsafeMutableRawBufferPointer? = nil
            client.allocate = { buffer }
            client.onRead = { [self] result in
                guard case .success(let n) = result else {
                    client.close()
                    return
                }
                received += buffer[0..<n]
                guard received.count >= 2, received.count >= 2 + (Int(received[0]) << 8 | Int(received[1])) else { return }
                let query = Array(received[2...])
                queries.append(TestDNSServer.describe(query))
                let body = tcpAnswer(query)
                let out = UnsafeMutableRawBufferPointer.allocate(byteCount: body.count + 2, alignment: 1)
                out[0] = UInt8(body.count >> 8)
                out[1] = UInt8(body.count & 0xFF)
                UnsafeMutableRawBufferPointer(rebasing: out[2...]).copyBytes(from: body)
                reply = out
                client.write(UnsafeRawBufferPointer(out)) { _ in
                    client.close {
                        buffer.deallocate()
                        reply?.deallocate()
                    }
                }
            }
            client.startReading()
        }
    }

    func close() {
        socket.close()
        spoofer.close()
        listener?.close()
        for c in tcpClients { c.close() }
    }

    static func describe(_ query: [UInt8]) -> Query {
        var labels: [String] = []
        var i = 12
        while i < query.count, query[i] != 0 {
            let n = Int(query[i])
            labels.append(String(decoding: query[(i + 1)..<min(i + 1 + n, query.count)], as: UTF8.self))
            i += 1 + n
        }
        let type = i + 2 < query.count ? UInt16(query[i + 1]) << 8 | UInt16(query[i + 2]) : 0
        return Query(id: UInt16(query[0]) << 8 | UInt16(query[1]), name: labels.joined(separator: "."), type: type)
    }
}

/// A reply to `query`: its header and question echoed, QR set, and records of the query's type
/// owned by the question's name (`data` is each record's data); `cnames` first, as a chain.
func dnsReply(to query: [UInt8], rcode: UInt8 = 0, truncated: Bool = false, addresses: [[UInt8]] = [],
              cnameChain: [String] = [], id: UInt16? = nil) -> [UInt8] {
    var m = query
    if let id {
        m[0] = UInt8(id >> 8)
        m[1] = UInt8(id & 0xFF)
    }
    m[2] = 0x81 | (truncated ? 0x02 : 0)
    m[3] = 0x80 | rcode
    let type = query[query.count - 3]
    var owner: [UInt8] = [0xC0, 12]
    var count = 0
    for name in cnameChain {
        var wire: [UInt8] = []
        for label in name.split(separator: ".") { wire += [UInt8(label.utf8.count)] + Array(label.utf8) }
        wire.append(0)
        let dataAt = m.count + owner.count + 10
        m += owner + [0, 5, 0, 1, 0, 0, 0, 60, 0, UInt8(wire.count)] + wire
        owner = [0xC0 | UInt8(dataAt >> 8), UInt8(dataAt & 0xFF)]
        count += 1
    }
    for a in addresses where (a.count == 4) == (type == 1) {
        m += owner + [0, type, 0, 1, 0, 0, 0, 60, 0, UInt8(a.count)] + a
        count += 1
    }
    m[7] = UInt8(count)
    return m
}

/// A directory with resolv.conf and hosts files, removed at the end.
struct ResolverFiles {
    let directory: URL

    init(resolvConf: String, hosts: String = "") throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("dns-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try resolvConf.write(to: directory.appendingPathComponent("resolv.conf"), atomically: true, encoding: .utf8)
        try hosts.write(to: directory.appendingPathComponent("hosts"), atomically: true, encoding: .utf8)
    }

    func settings(port: UInt16, timeoutMilliseconds: UInt64? = 2000) -> BuiltinResolverSettings {
        var s = BuiltinResolverSettings()
        s.resolvConfPath = directory.appendingPathComponent("resolv.conf").path
        s.hostsPath = directory.appendingPathComponent("hosts").path
        s.nameserverPort = port
        s.timeoutMilliseconds = timeoutMilliseconds
        return s
    }

    func remove() { try? FileManager.default.removeItem(at: directory) }
}

private let loopbackV6: [UInt8] = [UInt8](repeating: 0, count: 15) + [1]

/// Resolves `host` with the built-in resolver and runs the loop until the result arrives.
private func resolve(_ loop: EventLoop, _ host: String, port: UInt16 = 443, _ settings: BuiltinResolverSettings,
                     timeoutMilliseconds: UInt64 = 10_000) -> Result<[String], UVError>? {
    var result: Result<[SocketAddress], UVError>? = nil
    BuiltinResolver.resolve(loop: loop, host: host, port: port, settings: settings, LookupCompletion { result = $0 })
    run(loop, until: { result != nil }, timeoutMilliseconds: timeoutMilliseconds)
    return result?.map { $0.map { $0.description } }
}

@Suite("built-in DNS resolver on libuv", .serialized)
struct DNSResolverTests {
    @Test func answersBothFamiliesIPv4First() throws {
        let loop = try EventLoop()
        let server = try TestDNSServer(loop: loop)
        server.answer = { query, from, server in
            server.send(dnsReply(to: query, addresses: [loopbackV6, [127, 0, 0, 1], [127, 0, 0, 2]]), to: from)
        }
        let files = try ResolverFiles(resolvConf: "nameserver 127.0.0.1\n")
        defer { files.remove() }
        let result = resolve(loop, "Tunnel.Example.Test", files.settings(port: server.port))
        #expect(try result?.get() == ["127.0.0.1:443", "127.0.0.2:443", "[::1]:443"])
        #expect(server.queries.map { $0.name } == ["tunnel.example.test", "tunnel.example.test"])
        #expect(server.queries.map { $0.type } == [1, 28])
        #expect(server.queries[0].id != server.queries[1].id)
        server.close()
        finish(loop)
    }

    @Test func hostsFileComesFirst() throws {
        let loop = try EventLoop()
        let server = try TestDNSServer(loop: loop)
        let files = try ResolverFiles(resolvConf: "nameserver 127.0.0.1\n",
                                      hosts: "# test\n::1 svc.test\n192.0.2.7\tother.test SVC.test\n")
        defer { files.remove() }
        #expect(try resolve(loop, "svc.test.", port: 22, files.settings(port: server.port))?.get() == ["192.0.2.7:22", "[::1]:22"])
        #expect(server.queries.isEmpty)
        server.close()
        finish(loop)
    }

    @Test func followsACNAMEChain() throws {
        let loop = try EventLoop()
        let server = try TestDNSServer(loop: loop)
        server.answer = { query, from, server in
            server.send(dnsReply(to: query, addresses: [[127, 0, 0, 9]], cnameChain: ["edge.cdn.test", "node7.cdn.test"]), to: from)
        }
        let files = try ResolverFiles(resolvConf: "nameserver 127.0.0.1\n")
        defer { files.remove() }
        #expect(try resolve(loop, "www.example.test", files.settings(port: server.port))?.get() == ["127.0.0.9:443"])
        server.close()
        finish(loop)
    }

    @Test func repliesFromAnotherPortOrWithAnotherIdAreIgnored() throws {
        let loop = try EventLoop()
        let server = try TestDNSServer(loop: loop)
        server.answer = { query, from, server in
            // Forged first: the right id from the wrong port, and the right port with a wrong id.
            server.spoof(dnsReply(to: query, addresses: [[10, 9, 9, 9]]), to: from)
            let id = UInt16(query[0]) << 8 | UInt16(query[1])
            server.send(dnsReply(to: query, addresses: [[10, 8, 8, 8]], id: id ^ 0x5555), to: from)
            server.send(dnsReply(to: query, addresses: [[127, 0, 0, 1]]), to: from)
        }
        let files = try ResolverFiles(resolvConf: "nameserver 127.0.0.1\n")
        defer { files.remove() }
        #expect(try resolve(loop, "svc.test", files.settings(port: server.port))?.get() == ["127.0.0.1:443"])
        server.close()
        finish(loop)
    }

    @Test func nonexistentNameIsAClearError() throws {
        let loop = try EventLoop()
        let server = try TestDNSServer(loop: loop)
        server.answer = { query, from, server in server.send(dnsReply(to: query, rcode: 3), to: from) }
        let files = try ResolverFiles(resolvConf: "nameserver 127.0.0.1\n")
        defer { files.remove() }
        let result = resolve(loop, "missing.example.test", files.settings(port: server.port))
        guard case .failure(let error)? = result else {
            Issue.record("expected a failure, got \(String(describing: result))")
            return
        }
        #expect(error.name == "EAI_NONAME")
        #expect(error.description.contains("missing.example.test"))
        #expect(error.description.contains("NXDOMAIN"))
        #expect(error.description.contains("127.0.0.1:\(server.port)"))
        server.close()
        finish(loop)
    }

    @Test func silentServersTimeOutAfterEveryTry() throws {
        let loop = try EventLoop()
        let server = try TestDNSServer(loop: loop)
        // The second nameserver has nothing listening on the port at all.
        let files = try ResolverFiles(resolvConf: "nameserver 127.0.0.1\nnameserver 127.0.0.2\noptions attempts:2 timeout:9\n")
        defer { files.remove() }
        let started = loop.now
        let result = resolve(loop, "slow.example.test", files.settings(port: server.port, timeoutMilliseconds: 100))
        guard case .failure(let error)? = result else {
            Issue.record("expected a failure, got \(String(describing: result))")
            return
        }
        #expect(error.name == "EAI_AGAIN")
        #expect(error.description.contains("no answer from the nameservers after 4 tries"))
        #expect(error.description.contains("slow.example.test"))
        // Tries 1 and 3 went to 127.0.0.1 (both families each time), 2 and 4 to 127.0.0.2.
        #expect(server.queries.count == 4)
        #expect(Set(server.queries.map { $0.id }).count == 4, "a fresh id for every query")
        #expect(loop.now - started >= 400)
        server.close()
        finish(loop)
    }

    @Test func serverFailureMovesToTheNextNameserver() throws {
        let loop = try EventLoop()
        let failing = try TestDNSServer(loop: loop)
        // resolv.conf names the same server twice (every nameserver gets the same port): it fails
        // the first try (SERVFAIL for both families) and answers the second.
        failing.answer = { query, from, server in
            server.send(dnsReply(to: query, rcode: server.queries.count <= 2 ? 2 : 0, addresses: [[127, 0, 0, 5]]), to: from)
        }
        let files = try ResolverFiles(resolvConf: "nameserver 127.0.0.1\nnameserver 127.0.0.1\n")
        defer { files.remove() }
        #expect(try resolve(loop, "svc.test", files.settings(port: failing.port))?.get() == ["127.0.0.5:443"])
        #expect(failing.queries.count == 4)
        failing.close()
        finish(loop)
    }

    @Test func truncatedAnswersAreAskedAgainOverTCP() throws {
        let loop = try EventLoop()
        // The TCP port of the UDP port's number may be taken (an ephemeral port): try others.
        var server = try TestDNSServer(loop: loop)
        for _ in 0..<20 {
            do {
                try server.serveTCP(loop: loop) { query in
                    dnsReply(to: query, addresses: (1...40).map { [127, 0, 1, UInt8($0)] } + [loopbackV6])
                }
                break
            } catch {
                server.close()
                server = try TestDNSServer(loop: loop)
            }
        }
        server.answer = { query, from, server in server.send(dnsReply(to: query, truncated: true), to: from) }
        let files = try ResolverFiles(resolvConf: "nameserver 127.0.0.1\n")
        defer { files.remove() }
        let result = try resolve(loop, "big.example.test", files.settings(port: server.port))?.get()
        #expect(result?.count == 41)
        #expect(result?.first == "127.0.1.1:443")
        #expect(result?.last == "[::1]:443")
        #expect(server.queries.count == 4, "each family over UDP, then over TCP")
        server.close()
        finish(loop)
    }

    @Test func withoutResolvConfTheLocalHostIsAsked() throws {
        let loop = try EventLoop()
        let server = try TestDNSServer(loop: loop)
        server.answer = { query, from, server in server.send(dnsReply(to: query, addresses: [[127, 0, 0, 4]]), to: from) }
        let files = try ResolverFiles(resolvConf: "")
        defer { files.remove() }
        var settings = files.settings(port: server.port)
        settings.resolvConfPath = files.directory.appendingPathComponent("absent.conf").path
        settings.hostsPath = files.directory.appendingPathComponent("absent.hosts").path
        #expect(try resolve(loop, "svc.test", settings)?.get() == ["127.0.0.4:443"])
        server.close()
        finish(loop)
    }

    // Each owner (a runtime, an agent session) has its own Resolver: cancelling one ends its
    // lookups at once, handles and all, and leaves another's to finish.
    @Test func cancelAllEndsOnlyThatResolversLookups() throws {
        let loop = try EventLoop()
        let server = try TestDNSServer(loop: loop)
        server.answer = { query, from, server in
            // Only the second resolver's name is answered; the first one's would wait 10 s.
            if TestDNSServer.describe(query).name == "kept.test" {
                server.send(dnsReply(to: query, addresses: [[127, 0, 0, 5]]), to: from)
            }
        }
        let files = try ResolverFiles(resolvConf: "nameserver 127.0.0.1\n")
        defer { files.remove() }
        let cancelled = Resolver(mode: .builtin, builtinSettings: files.settings(port: server.port, timeoutMilliseconds: 10_000))
        let kept = Resolver(mode: .builtin, builtinSettings: files.settings(port: server.port))
        var cancelledResult: Result<[SocketAddress], UVError>? = nil
        var keptResult: Result<[SocketAddress], UVError>? = nil
        cancelled.resolve(loop: loop, host: "cancelled.test", port: 1) { cancelledResult = $0 }
        kept.resolve(loop: loop, host: "kept.test", port: 2) { keptResult = $0 }
        #expect(cancelled.inFlight.count == 1 && kept.inFlight.count == 1)
        cancelled.cancelAll()
        #expect(cancelled.inFlight.isEmpty && kept.inFlight.count == 1)
        run(loop, until: { keptResult != nil })
        #expect(try keptResult?.get().map { $0.description } == ["127.0.0.5:2"])
        #expect(cancelledResult == nil)
        #expect(kept.inFlight.isEmpty)
        server.close()
        finish(loop)
    }

    @Test func invalidNamesFailAtOnce() throws {
        let loop = try EventLoop()
        let files = try ResolverFiles(resolvConf: "nameserver 127.0.0.1\n")
        defer { files.remove() }
        var result: Result<[SocketAddress], UVError>? = nil
        BuiltinResolver.resolve(loop: loop, host: "bad name.test", port: 1, settings: files.settings(port: 9), LookupCompletion { result = $0 })
        guard case .failure(let error)? = result else {
            Issue.record("expected an immediate failure, got \(String(describing: result))")
            return
        }
        #expect(error.name == "EAI_NONAME")
        #expect(error.description.contains("bad name.test"))
        #expect(error.description.contains("not a valid host name"))
        finish(loop)
    }

    @Test func socketAddressesFromIPAddresses() {
        #expect(SocketAddress(IPAddress("192.0.2.1")!, port: 80).description == "192.0.2.1:80")
        #expect(SocketAddress(IPAddress("2001:db8::5")!, port: 8443).description == "[2001:db8::5]:8443")
        let a = SocketAddress(ip: "127.0.0.1", port: 53)!
        #expect(a.isSameEndpoint(as: SocketAddress(IPAddress("127.0.0.1")!, port: 53)))
        #expect(!a.isSameEndpoint(as: SocketAddress(ip: "127.0.0.1", port: 54)!))
        #expect(!a.isSameEndpoint(as: SocketAddress(ip: "127.0.0.2", port: 53)!))
        #expect(!a.isSameEndpoint(as: SocketAddress(ip: "::ffff:127.0.0.1", port: 53)!))
    }
}
