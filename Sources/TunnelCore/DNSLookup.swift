/// Why a name could not be resolved by the built-in resolver.
public enum DNSLookupError: Error, Equatable, CustomStringConvertible {
    /// The host name cannot be asked for (no query was sent).
    case invalidName(DNSError)
    /// A server said the name does not exist (NXDOMAIN).
    case nonexistentDomain
    /// The name exists but has neither A nor AAAA records.
    case noAddress
    /// No server answered within the timeout, on any of `tries` tries.
    case noAnswer(tries: Int)
    /// The last server that answered could not give the records: SERVFAIL, REFUSED, a
    /// malformed answer over TCP...
    case serverFailed(DNSError)
    /// Sending a query failed, or the TCP retry could not be completed.
    case transport(String)

    public var description: String {
        switch self {
        case .invalidName(let e): return "not a valid host name: \(e)"
        case .nonexistentDomain: return "the name does not exist (NXDOMAIN)"
        case .noAddress: return "the name has no IPv4 or IPv6 address (no A or AAAA records)"
        case .noAnswer(let tries): return "no answer from the nameservers after \(tries) \(tries == 1 ? "try" : "tries")"
        case .serverFailed(let e): return "\(e)"
        case .transport(let why): return why
        }
    }
}

/// One name looked up the way a stub resolver does, as a state machine: the caller sends what
/// it is told to, passes in what arrives and when its timer fires, and reads the outcome from
/// the returned action. No I/O, no clock, no randomness of its own (query ids come from the
/// caller's generator).
///
/// A *try* asks one nameserver for every address family still unanswered, in parallel, and
/// lasts at most the timeout. Tries go through the nameservers in order, `attempts` rounds
/// (resolv.conf's `timeout` and `attempts`; glibc's order). A family is settled by an answer
/// (its addresses, possibly none); NXDOMAIN settles the whole lookup. A server error (SERVFAIL,
/// REFUSED...) moves that family on to the next try at once. A truncated UDP answer is asked
/// again over TCP within the same try.
///
/// When a try times out while one family already has addresses, the lookup ends with those
/// instead of asking the other family again: one slow or broken AAAA path then costs one
/// timeout, not `servers × attempts` of them.
///
/// States: `idle` → (start) `waiting` for the try's answers → either the next try (timeout,
/// server error) or `finished`. Every event after `finished` is ignored.
public struct DNSLookup {
    public enum Action: Equatable {
        /// Close the previous try's sockets; from a fresh UDP socket send each query to
        /// nameserver `server` (an index into the caller's list); arm the timer. Accept replies
        /// only from that nameserver's address and port.
        case startTry(server: Int, queries: [[UInt8]], timeoutMilliseconds: UInt64)
        /// Send `query` to nameserver `server` over TCP (2-byte length prefix) and pass the reply
        /// to `receivedOverTCP`, or a failure to `tcpFailed`.
        case queryOverTCP(server: Int, query: [UInt8])
        /// Done: close every socket and the timer.
        case finished(Result<[IPAddress], DNSLookupError>)
    }

    private enum FamilyState {
        case waiting(id: UInt16, overTCP: Bool)
        case answered([IPAddress])
        /// Failed on the current try; asked again on the next one.
        case failed
    }

    public let name: DNSName
    public let types: [DNSQueryType]
    public let serverCount: Int
    public let attempts: Int
    public let timeoutMilliseconds: UInt64
    private let nextID: () -> UInt16
    private var states: [FamilyState]
    private var tryNumber = -1
    private var lastFailure: DNSLookupError? = nil
    public private(set) var isFinished = false

    /// `types` are asked in parallel; their addresses are returned in this order.
    public init(name: DNSName, types: [DNSQueryType] = [.a, .aaaa], serverCount: Int, attempts: Int,
                timeoutMilliseconds: UInt64, nextID: @escaping () -> UInt16) {
        precondition(serverCount > 0 && attempts > 0 && !types.isEmpty, "a lookup needs a server, an attempt and a type")
        self.name = name
        self.types = types
        self.serverCount = serverCount
        self.attempts = attempts
        self.timeoutMilliseconds = timeoutMilliseconds
        self.nextID = nextID
        states = Array(repeating: .failed, count: types.count)
    }

    /// Tries in all: every server, `attempts` times.
    public var totalTries: Int { serverCount * attempts }

    /// The nameserver of the current try.
    public var currentServer: Int { max(tryNumber, 0) % serverCount }

    public mutating func start() -> Action {
        precondition(tryNumber == -1, "a lookup starts once")
        return nextTry()
    }

    /// A datagram from the current try's nameserver (the caller checked its source). Replies
    /// that do not match an outstanding query, or are malformed, are ignored (nil): they may be
    /// forged or stale, and the real answer may still come.
    public mutating func receivedDatagram(_ message: UnsafeRawBufferPointer) -> Action? {
        guard !isFinished, let id = DNSMessage.id(of: message), let family = waitingFamily(id: id, overTCP: false) else { return nil }
        do throws(DNSError) {
            let answer = try DNSMessage.parseResponse(message, id: id, name: name, type: types[family])
            states[family] = .answered(answer.addresses)
            return progress()
        } catch {
            switch error {
            case .truncatedResponse:
                states[family] = .waiting(id: id, overTCP: true)
                return .queryOverTCP(server: currentServer, query: DNSMessage.query(id: id, name: name, type: types[family]))
            case .nonexistentDomain:
                return finish(.failure(.nonexistentDomain))
            case .serverFailure, .refused, .formatError, .notImplemented, .otherResponseCode:
                return failed(family, .serverFailed(error))
            default:
                return nil
            }
        }
    }

    /// A reply read over TCP. The connection was ours alone, so anything wrong with the reply
    /// counts against the server.
    public mutating func receivedOverTCP(_ message: UnsafeRawBufferPointer) -> Action? {
        guard !isFinished, let id = DNSMessage.id(of: message), let family = waitingFamily(id: id, overTCP: true) else { return nil }
        do throws(DNSError) {
            let answer = try DNSMessage.parseResponse(message, id: id, name: name, type: types[family])
            states[family] = .answered(answer.addresses)
            return progress()
        } catch {
            if error == .nonexistentDomain { return finish(.failure(.nonexistentDomain)) }
            return failed(family, .serverFailed(error))
        }
    }

    /// The TCP exchange of the query with `id` failed (connect, write, early close).
    public mutating func tcpFailed(id: UInt16, reason: String) -> Action? {
        guard !isFinished, let family = waitingFamily(id: id, overTCP: true) else { return nil }
        return failed(family, .transport(reason))
    }

    /// Sending the current try's queries failed (for example no route to an IPv6 server).
    public mutating func sendFailed(reason: String) -> Action? {
        guard !isFinished else { return nil }
        var any = false
        for i in states.indices {
            if case .waiting = states[i] {
                states[i] = .failed
                any = true
            }
        }
        guard any else { return nil }
        lastFailure = .transport(reason)
        return progress()
    }

    /// The current try's timer fired.
    public mutating func timerFired() -> Action? {
        guard !isFinished else { return nil }
        var timedOut = false
        for i in states.indices {
            if case .waiting = states[i] {
                states[i] = .failed
                timedOut = true
            }
        }
        if !timedOut { return progress() }
        lastFailure = .noAnswer(tries: totalTries)
        let found = addresses()
        if !found.isEmpty { return finish(.success(found)) }
        return nextTry()
    }

    // MARK: Steps

    private func waitingFamily(id: UInt16, overTCP: Bool) -> Int? {
        for i in states.indices {
            if case .waiting(let waitingID, let tcp) = states[i], waitingID == id, tcp == overTCP { return i }
        }
        return nil
    }

    private mutating func failed(_ family: Int, _ error: DNSLookupError) -> Action? {
        states[family] = .failed
        lastFailure = error
        return progress()
    }

    /// After a family settled or failed: wait for the others, or finish, or move on.
    private mutating func progress() -> Action? {
        var allAnswered = true
        for state in states {
            switch state {
            case .waiting: return nil
            case .failed: allAnswered = false
            case .answered: break
            }
        }
        if allAnswered {
            let found = addresses()
            return finish(found.isEmpty ? .failure(.noAddress) : .success(found))
        }
        return nextTry()
    }

    private mutating func nextTry() -> Action {
        tryNumber += 1
        guard tryNumber < totalTries else {
            let found = addresses()
            if !found.isEmpty { return finish(.success(found)) }
            return finish(.failure(lastFailure ?? .noAnswer(tries: totalTries)))
        }
        var queries: [[UInt8]] = []
        var used: [UInt16] = []
        for i in states.indices {
            if case .answered = states[i] { continue }
            var id = nextID()
            while used.contains(id) { id = nextID() }
            used.append(id)
            states[i] = .waiting(id: id, overTCP: false)
            queries.append(DNSMessage.query(id: id, name: name, type: types[i]))
        }
        return .startTry(server: currentServer, queries: queries, timeoutMilliseconds: timeoutMilliseconds)
    }

    private func addresses() -> [IPAddress] {
        var out: [IPAddress] = []
        for state in states {
            if case .answered(let list) = state { out += list }
        }
        return out
    }

    private mutating func finish(_ result: Result<[IPAddress], DNSLookupError>) -> Action {
        isFinished = true
        return .finished(result)
    }
}
