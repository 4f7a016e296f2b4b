// The stub resolver's state machine: which queries go to which nameserver, and when the lookup
// ends, driven by events only (answers, timer, TCP outcomes), with predictable query ids.
import Testing
@testable import TunnelCore

private let name = try! DNSName("svc.example")

/// Query ids 0x0101, 0x0202, ... so tests know each query's id in advance.
private func counter() -> () -> UInt16 {
    var n: UInt16 = 0
    return {
        n += 1
        return n &* 0x0101
    }
}

private func lookup(servers: Int = 2, attempts: Int = 2) -> DNSLookup {
    DNSLookup(name: name, serverCount: servers, attempts: attempts, timeoutMilliseconds: 1000, nextID: counter())
}

/// An answer to `query` with the given rcode and IPv4 (A) or IPv6 (AAAA) addresses.
private func answer(to query: [UInt8], rcode: UInt8 = 0, tc: Bool = false, addresses: [[UInt8]] = []) -> [UInt8] {
    var m = query
    m[2] = 0x81 | (tc ? 0x02 : 0)
    m[3] = 0x80 | rcode
    m[7] = UInt8(addresses.count)
    let type = query[query.count - 3]
    for a in addresses {
        m += [0xC0, 12, 0, type, 0, 1, 0, 0, 0, 60, 0, UInt8(a.count)] + a
    }
    return m
}

private func feed(_ l: inout DNSLookup, _ message: [UInt8]) -> DNSLookup.Action? {
    message.withUnsafeBytes { l.receivedDatagram($0) }
}

private func feedTCP(_ l: inout DNSLookup, _ message: [UInt8]) -> DNSLookup.Action? {
    message.withUnsafeBytes { l.receivedOverTCP($0) }
}

/// The queries of a `startTry`, checking its server.
private func queries(_ action: DNSLookup.Action?, server: Int, sourceLocation: SourceLocation = #_sourceLocation) -> [[UInt8]] {
    guard case .startTry(let s, let q, let timeout)? = action else {
        Issue.record("expected startTry, got \(String(describing: action))", sourceLocation: sourceLocation)
        return []
    }
    #expect(s == server, sourceLocation: sourceLocation)
    #expect(timeout == 1000, sourceLocation: sourceLocation)
    return q
}

private let v4: [UInt8] = [192, 0, 2, 10]
private let v6: [UInt8] = [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [5]

@Suite struct DNSLookupTests {
    @Test func firstTryAsksForBothFamilies() {
        var l = lookup()
        let q = queries(l.start(), server: 0)
        #expect(q == [DNSMessage.query(id: 0x0101, name: name, type: .a), DNSMessage.query(id: 0x0202, name: name, type: .aaaa)])
    }

    @Test func addressesComeIPv4FirstWhateverTheOrderOfAnswers() {
        var l = lookup()
        let q = queries(l.start(), server: 0)
        #expect(feed(&l, answer(to: q[1], addresses: [v6])) == nil, "still waiting for A")
        let done = feed(&l, answer(to: q[0], addresses: [v4]))
        #expect(done == .finished(.success([IPAddress(bytes: v4)!, IPAddress(bytes: v6)!])))
        #expect(l.isFinished)
        #expect(feed(&l, answer(to: q[0], addresses: [v4])) == nil, "nothing after the end")
        #expect(l.timerFired() == nil)
    }

    @Test func strayRepliesAreIgnored() {
        var l = lookup()
        let q = queries(l.start(), server: 0)
        var wrongID = answer(to: q[0], addresses: [v4])
        wrongID[1] ^= 0xFF
        #expect(feed(&l, wrongID) == nil)
        var wrongName = answer(to: q[0], addresses: [v4])
        wrongName[13] = 0x78  // "svc" -> "xvc"
        #expect(feed(&l, wrongName) == nil)
        var notResponse = answer(to: q[0], addresses: [v4])
        notResponse[2] &= 0x7F
        #expect(feed(&l, notResponse) == nil)
        #expect(feed(&l, [0x01]) == nil)
        #expect(feed(&l, Array(answer(to: q[0], addresses: [v4]).dropLast())) == nil)
        // The real answers still count.
        #expect(feed(&l, answer(to: q[0], addresses: [v4])) == nil)
        #expect(feed(&l, answer(to: q[1])) == .finished(.success([IPAddress(bytes: v4)!])))
    }

    @Test func nxdomainEndsTheLookup() {
        var l = lookup()
        let q = queries(l.start(), server: 0)
        #expect(feed(&l, answer(to: q[1], rcode: 3)) == .finished(.failure(.nonexistentDomain)))
    }

    @Test func noRecordsOfEitherFamily() {
        var l = lookup()
        let q = queries(l.start(), server: 0)
        #expect(feed(&l, answer(to: q[0])) == nil)
        #expect(feed(&l, answer(to: q[1])) == .finished(.failure(.noAddress)))
    }

    @Test func serverFailureMovesThatFamilyToTheNextServer() {
        var l = lookup()
        let q = queries(l.start(), server: 0)
        #expect(feed(&l, answer(to: q[0], rcode: 2)) == nil, "AAAA still outstanding")
        let next = feed(&l, answer(to: q[1], addresses: [v6]))
        let retry = queries(next, server: 1)
        #expect(retry == [DNSMessage.query(id: 0x0303, name: name, type: .a)])
        #expect(feed(&l, answer(to: retry[0], addresses: [v4])) == .finished(.success([IPAddress(bytes: v4)!, IPAddress(bytes: v6)!])))
    }

    @Test func refusedEverywhereReportsTheLastError() {
        var l = lookup(servers: 1, attempts: 2)
        var q = queries(l.start(), server: 0)
        #expect(feed(&l, answer(to: q[0], rcode: 5)) == nil)
        q = queries(feed(&l, answer(to: q[1], rcode: 5)), server: 0)
        #expect(q.count == 2)
        #expect(feed(&l, answer(to: q[0], rcode: 5)) == nil)
        #expect(feed(&l, answer(to: q[1], rcode: 5)) == .finished(.failure(.serverFailed(.refused))))
    }

    @Test func timeoutsGoThroughServersThenAttempts() {
        var l = lookup(servers: 2, attempts: 2)
        #expect(queries(l.start(), server: 0).count == 2)
        #expect(queries(l.timerFired(), server: 1).count == 2)
        #expect(queries(l.timerFired(), server: 0).count == 2)
        #expect(queries(l.timerFired(), server: 1).count == 2)
        #expect(l.timerFired() == .finished(.failure(.noAnswer(tries: 4))))
    }

    @Test func freshIdsOnEveryTry() {
        var l = lookup()
        let first = queries(l.start(), server: 0)
        let second = queries(l.timerFired(), server: 1)
        let ids = (first + second).map { UInt16($0[0]) << 8 | UInt16($0[1]) }
        #expect(ids == [0x0101, 0x0202, 0x0303, 0x0404])
        // An answer to the first try's query is stale now.
        #expect(feed(&l, answer(to: first[0], addresses: [v4])) == nil)
    }

    @Test func collidingIdsAreDrawnAgain() {
        var draws: [UInt16] = [7, 7, 7, 9]
        var l = DNSLookup(name: name, serverCount: 1, attempts: 1, timeoutMilliseconds: 1000, nextID: { draws.removeFirst() })
        let q = queries(l.start(), server: 0)
        #expect(q.map { UInt16($0[0]) << 8 | UInt16($0[1]) } == [7, 9])
    }

    @Test func oneFamilyWithAddressesEndsTheLookupAtTheTimeout() {
        var l = lookup()
        let q = queries(l.start(), server: 0)
        #expect(feed(&l, answer(to: q[0], addresses: [v4])) == nil)
        #expect(l.timerFired() == .finished(.success([IPAddress(bytes: v4)!])))
    }

    @Test func emptyAnswerAndATimeoutRetriesTheOtherFamily() {
        var l = lookup(servers: 1, attempts: 2)
        let q = queries(l.start(), server: 0)
        #expect(feed(&l, answer(to: q[1])) == nil)
        let retry = queries(l.timerFired(), server: 0)
        #expect(retry == [DNSMessage.query(id: 0x0303, name: name, type: .a)])
        #expect(l.timerFired() == .finished(.failure(.noAnswer(tries: 2))))
    }

    @Test func truncatedAnswerIsAskedAgainOverTCP() {
        var l = lookup()
        let q = queries(l.start(), server: 0)
        #expect(feed(&l, answer(to: q[0], tc: true)) == .queryOverTCP(server: 0, query: q[0]))
        // The UDP answer no longer counts for that family; the TCP one does.
        #expect(feed(&l, answer(to: q[0], addresses: [v4])) == nil)
        #expect(feed(&l, answer(to: q[1])) == nil)
        #expect(feedTCP(&l, answer(to: q[0], addresses: [v4, [192, 0, 2, 11]]))
                == .finished(.success([IPAddress(bytes: v4)!, IPAddress(bytes: [192, 0, 2, 11])!])))
    }

    @Test func tcpFailureMovesOn() {
        var l = lookup()
        let q = queries(l.start(), server: 0)
        #expect(feed(&l, answer(to: q[0], tc: true)) == .queryOverTCP(server: 0, query: q[0]))
        #expect(feed(&l, answer(to: q[1], addresses: [v6])) == nil)
        #expect(l.tcpFailed(id: 0x0202, reason: "no such TCP query") == nil)
        let retry = queries(l.tcpFailed(id: 0x0101, reason: "connection refused"), server: 1)
        #expect(retry.count == 1)
        // Garbage over TCP is the server's fault: the lookup moves on rather than waits.
        var again = lookup(servers: 1, attempts: 1)
        let q2 = queries(again.start(), server: 0)
        #expect(feed(&again, answer(to: q2[0], tc: true)) != nil)
        #expect(feed(&again, answer(to: q2[1])) == nil)
        var bad = answer(to: q2[0], addresses: [v4])
        bad[13] = 0x78
        #expect(feedTCP(&again, bad) == .finished(.failure(.serverFailed(.questionMismatch))))
    }

    @Test func sendFailureMovesToTheNextServer() {
        var l = lookup(servers: 2, attempts: 1)
        _ = queries(l.start(), server: 0)
        #expect(queries(l.sendFailed(reason: "network unreachable"), server: 1).count == 2)
        #expect(l.sendFailed(reason: "network unreachable") == .finished(.failure(.transport("network unreachable"))))
    }
}
