// The source state machine driven event by event (docs/PROTOCOL.md §6, §7, §9, §11, §16.11–12).
// Each test spells out the whole list of actions an event has to produce, so an extra STREAM_START,
// a missing reset or a close too many fails it. Log lines are recorded separately and are only
// looked at where a warning is what the behaviour consists of.
import Testing
import TunnelCore

private typealias Mapping = SourceSession.Mapping

private func named(_ id: String, _ port: UInt16) -> Mapping { Mapping(serviceId: id, port: port) }
private func unnamed(_ port: UInt16) -> Mapping { Mapping(serviceId: "", port: port) }

/// What one event produced, as a value that can be compared. `.accepted`/`.refused` stand for the
/// return value of `accepted(service:into:)` and always come first in that event's list.
private enum Act: Equatable {
    case accepted(UInt32)
    case refused
    case listen(Int, String, UInt16)
    case deliver(UInt32, [UInt8])
    case close(UInt32)
    case reset(UInt32)
    case send(Decoded)
    /// `startLinger`: the half-close linger timer of a connection, in milliseconds.
    case linger(UInt32, Int)
    case reconnect(SessionEndReason)
    case fatal(SessionEndReason)
}

private func deliver(_ id: UInt32, _ text: String) -> Act { .deliver(id, Array(text.utf8)) }

private func sentStreamStart(_ stream: Int32, _ service: String = "", c: UInt32 = 0) -> Act {
    .send(Decoded(type: .streamStart, streamId: stream, serviceId: service, connectionId: c))
}
private func sentConnectionStart(_ stream: Int32, _ service: String, c: UInt32) -> Act {
    .send(Decoded(type: .connectionStart, streamId: stream, serviceId: service, connectionId: c))
}
private func sentStreamReset(_ stream: Int32, _ service: String = "") -> Act {
    .send(Decoded(type: .streamReset, streamId: stream, serviceId: service))
}
private func sentConnectionReset(_ stream: Int32, _ service: String, c: UInt32) -> Act {
    .send(Decoded(type: .connectionReset, streamId: stream, serviceId: service, connectionId: c))
}
/// The DATA fields expected from `dataHeader(for:)` (no payload).
private func dataHeader(_ stream: Int32, _ service: String = "", c: UInt32 = 0) -> Decoded {
    Decoded(type: .data, streamId: stream, serviceId: service, connectionId: c)
}

/// The `-y` format by name (test arguments must be Sendable, `MessageFormat` is not).
private func messageFormat(_ name: String) -> MessageFormat {
    let format: MessageFormat = name == "V1" ? .v1 : name == "V2" ? .v2 : .v3
    precondition(format.description == name, "unknown format \(name)")
    return format
}

/// One `SourceSession` plus helpers that feed it events and record what comes back.
private final class Harness {
    let session: SourceSession
    /// Log lines of the latest event only.
    private(set) var logs: [(level: LogLevel, text: String)] = []

    init(_ mappings: [Mapping], format: MessageFormat = .v3, maximumConnections: Int = 128,
         firstStreamId: Int32 = 1, firstLocalId: UInt32 = 1, lingerMilliseconds: Int = 10_000) {
        var settings = SourceSessionSettings()
        settings.destinationFormat = format
        settings.maximumConnectionsPerService = maximumConnections
        settings.halfCloseLingerMilliseconds = lingerMilliseconds
        session = SourceSession(mappings: mappings, settings: settings, firstStreamId: firstStreamId, firstLocalId: firstLocalId)
    }

    /// A harness whose SERVICE_IDS has already been handled (checked to have set up listeners).
    convenience init(_ mappings: [Mapping], tunnel: [String], format: MessageFormat = .v3,
                     maximumConnections: Int = 128, firstStreamId: Int32 = 1, lingerMilliseconds: Int = 10_000) {
        self.init(mappings, format: format, maximumConnections: maximumConnections, firstStreamId: firstStreamId,
                  lingerMilliseconds: lingerMilliseconds)
        let acts = serviceIds(tunnel)
        precondition(!acts.isEmpty && acts.allSatisfy { if case .listen = $0 { true } else { false } },
                     "test setup: SERVICE_IDS \(tunnel) did not set up listeners: \(acts)")
    }

    /// Turns the actions into `Act`s right away: a `deliver` view is only valid during the call.
    private func convert(_ actions: [SourceAction]) -> [Act] {
        logs = []
        var out: [Act] = []
        for action in actions {
            switch action {
            case .listen(let service, let serviceId, let port): out.append(.listen(service, serviceId, port))
            case .deliver(let id, let view): out.append(.deliver(id.rawValue, Array(view)))
            case .closeLocal(let id): out.append(.close(id.rawValue))
            case .resetLocal(let id): out.append(.reset(id.rawValue))
            case .send(let message): out.append(.send(Decoded(message)))
            case .startLinger(let id, let milliseconds): out.append(.linger(id.rawValue, milliseconds))
            case .log(let level, let text): logs.append((level, text))
            case .reconnect(let reason): out.append(.reconnect(reason))
            case .fatal(let reason): out.append(.fatal(reason))
            }
        }
        return sortingCloseRuns(out)
    }

    /// Runs of closes and of resets compared sorted (`sortingLocalRuns`, TestSupport.swift).
    private func sortingCloseRuns(_ acts: [Act]) -> [Act] {
        sortingLocalRuns(acts, local: { act in
            switch act {
            case .close(let id): return (0, id)
            case .reset(let id): return (1, id)
            default: return nil
            }
        }, make: { kind, id in kind == 0 ? .close(id) : .reset(id) })
    }

    private func record(_ body: (inout [SourceAction]) -> Void) -> [Act] {
        var actions: [SourceAction] = []
        body(&actions)
        return convert(actions)
    }

    /// True if the latest event logged a line at `level` that contains all of `words`.
    func logged(_ level: LogLevel, _ words: String...) -> Bool {
        logs.contains { line in line.level == level && words.allSatisfy { line.text.contains($0) } }
    }
    var loggedAtWarningOrWorse: Bool { logs.contains { $0.level <= .warning } }

    // Tunnel side.

    func handle(_ message: TunnelMessage) -> [Act] { record { session.handle(message, into: &$0) } }

    func serviceIds(_ ids: [String]) -> [Act] {
        handle(TunnelMessage(type: .serviceIds, availableServiceIds: ids.map { Array($0.utf8) }))
    }
    func streamReset(_ stream: Int32, _ service: String = "") -> [Act] {
        handle(TunnelMessage(type: .streamReset, streamId: stream, serviceId: Array(service.utf8)))
    }
    func connectionReset(_ stream: Int32, _ service: String, c: UInt32) -> [Act] {
        handle(TunnelMessage(type: .connectionReset, streamId: stream, serviceId: Array(service.utf8), connectionId: c))
    }
    func sessionReset() -> [Act] { handle(TunnelMessage(type: .sessionReset)) }

    /// V1 DATA: neither service id nor connection id.
    func data(_ stream: Int32, _ text: String) -> [Act] { data(stream, "", c: 0, text) }
    /// V2 DATA (V1 when `service` is empty): no connection id.
    func data(_ stream: Int32, _ service: String, _ text: String) -> [Act] { data(stream, service, c: 0, text) }
    /// DATA whose payload points into a buffer that exists only during this call, like a frame
    /// decoded in place from the WebSocket buffer.
    func data(_ stream: Int32, _ service: String = "", c: UInt32, _ text: String) -> [Act] {
        let payload = Array(text.utf8)
        return payload.withUnsafeBytes { view in
            handle(TunnelMessage(type: .data, streamId: stream, payload: view, serviceId: Array(service.utf8), connectionId: c))
        }
    }

    // Local side.

    func accept(_ service: Int = 0) -> [Act] {
        var actions: [SourceAction] = []
        let id = session.accepted(service: service, into: &actions)
        return [id.map { Act.accepted($0.rawValue) } ?? .refused] + convert(actions)
    }
    func localClosed(_ id: UInt32) -> [Act] { record { session.localClosed(LocalConnectionID(id), into: &$0) } }
    func localEnded(_ id: UInt32) -> [Act] { record { session.localEnded(LocalConnectionID(id), into: &$0) } }
    func lingerExpired(_ id: UInt32) -> [Act] { record { session.lingerExpired(LocalConnectionID(id), into: &$0) } }
    /// A message decoded from its protobuf bytes, as the tunnel connection hands it over.
    func handle(bytes: [UInt8]) throws -> [Act] {
        try bytes.withUnsafeBytes { view in
            let message = try TunnelMessage.decode(view)
            return handle(message)
        }
    }
    func stalled(_ id: UInt32) -> [Act] { record { session.localStalled(LocalConnectionID(id), milliseconds: 1500, into: &$0) } }
    func closeAll() -> [Act] { record { session.closeAll(into: &$0) } }

    func header(_ id: UInt32) -> Decoded? { session.dataHeader(for: LocalConnectionID(id)).map { Decoded($0) } }
}

@Suite("Source session")
struct SourceSessionTests {
    // MARK: SERVICE_IDS

    @Test func eachTunnelServiceListensOnItsMappedPort() {
        let h = Harness([named("SSH", 2222), named("HTTP", 8080)])
        // Service indices follow the tunnel's order, not the order of -s.
        #expect(h.serviceIds(["HTTP", "SSH"]) == [.listen(0, "HTTP", 8080), .listen(1, "SSH", 2222)])
        #expect(!h.loggedAtWarningOrWorse)
        #expect(h.session.listeningServices == ["HTTP", "SSH"])
        #expect(h.accept(1) == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.accept(0) == [.accepted(2), sentStreamStart(2, "HTTP", c: 1)])
    }

    @Test func tunnelServiceWithoutMappingListensOnAFreePort() {
        let h = Harness([named("SSH", 2222)])
        #expect(h.serviceIds(["SSH", "VNC"]) == [.listen(0, "SSH", 2222), .listen(1, "VNC", 0)])
        #expect(h.logged(.warning, "VNC"))
        #expect(!h.logs.contains { $0.level <= .warning && $0.text.contains("SSH") })
        #expect(h.accept(1) == [.accepted(1), sentStreamStart(1, "VNC", c: 1)])
    }

    @Test func mappedServiceTheTunnelLacksOnlyWarns() {
        let h = Harness([named("SSH", 2222), named("HTTP", 8080)])
        #expect(h.serviceIds(["SSH"]) == [.listen(0, "SSH", 2222)])
        #expect(h.logged(.warning, "HTTP"))
        #expect(!h.logs.contains { $0.level < .warning })
        #expect(h.session.listeningServices == ["SSH"])
        // Only the tunnel's service exists; there is no index 1.
        #expect(h.accept(1) == [.refused])
    }

    @Test func singleUnnamedMappingAdoptsTheTunnelsSingleService() {
        let h = Harness([unnamed(5555)])
        // A list naming the one service twice still has one service.
        #expect(h.serviceIds(["SSH", "SSH"]) == [.listen(0, "SSH", 5555)])
        #expect(!h.loggedAtWarningOrWorse)
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.header(1) == dataHeader(1, "SSH", c: 1))
    }

    @Test func singleUnnamedMappingWithTwoTunnelServicesIsFatal() {
        let h = Harness([unnamed(5555)])
        #expect(h.serviceIds(["SSH1", "SSH2"]) == [.fatal(.sourceServiceMismatch(mapped: [""], tunnel: ["SSH1", "SSH2"]))])
        #expect(h.session.listeningServices == [])
        #expect(h.accept() == [.refused])
    }

    @Test("empty SERVICE_IDS with one mapping listens for the tunnel", arguments: ["", "SSH"])
    func emptyServiceIdsWithOneMapping(mappedName: String) {
        let h = Harness([Mapping(serviceId: mappedName, port: 5555)])
        #expect(h.serviceIds([]) == [.listen(0, "", 5555)])
        #expect(h.session.listeningServices == [""])
        // No service id on the wire: the tunnel has none.
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, c: 1)])
        #expect(h.header(1) == dataHeader(1, c: 1))
        #expect(h.data(1, c: 1, "x") == [deliver(1, "x")])
    }

    @Test func emptyServiceIdsWithTwoMappingsIsFatal() {
        let h = Harness([named("SSH", 2222), named("HTTP", 8080)])
        #expect(h.serviceIds([]) == [.fatal(.sourceServiceMismatch(mapped: ["SSH", "HTTP"], tunnel: []))])
        #expect(h.session.listeningServices == [])
    }

    @Test func repeatedServiceIdsSetsUpNothingNew() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"])
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.serviceIds(["SSH"]) == [])
        #expect(h.serviceIds(["SSH", "HTTP"]) == [])
        #expect(h.serviceIds([]) == [])
        #expect(h.session.listeningServices == ["SSH"])
        // The open connection and its stream are untouched.
        #expect(h.session.connectionCount == 1)
        #expect(h.data(1, "SSH", c: 1, "x") == [deliver(1, "x")])
        #expect(h.accept() == [.accepted(2), sentConnectionStart(1, "SSH", c: 2)])
    }

    /// The fatal reasons are printed as they are by the source runtime, so they have to point the
    /// user at the source's option (-s), not at the destination's (-d).
    @Test func serviceMismatchMessagesNameTheSourceOption() {
        let unnamedTwo = Harness([unnamed(5555)])
        let mappedTwo = Harness([named("SSH", 2222), named("HTTP", 8080)])
        for (h, ids, names) in [(unnamedTwo, ["SSH1", "SSH2"], ["SSH1", "SSH2"]), (mappedTwo, [], ["SSH", "HTTP"])] {
            let acts = h.serviceIds(ids)
            guard acts.count == 1, case .fatal(let reason) = acts[0] else {
                Issue.record("expected one fatal action, got \(acts)")
                continue
            }
            let text = reason.description
            #expect(text.contains("-s"), "\(text)")
            #expect(!text.contains("-d"), "\(text)")
            #expect(names.allSatisfy { text.contains($0) }, "\(text)")
            // With an empty SERVICE_IDS the tunnel has no services to "include" the mapped ones.
            #expect(!text.contains("services [] include"), "\(text)")
        }
    }

    // MARK: V3 numbering

    @Test func v3LaterConnectionsJoinTheStreamWithNewIds() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"])
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.accept() == [.accepted(2), sentConnectionStart(1, "SSH", c: 2)])
        #expect(h.accept() == [.accepted(3), sentConnectionStart(1, "SSH", c: 3)])
        #expect(h.localClosed(1) == [.close(1), sentConnectionReset(1, "SSH", c: 1)])
        #expect(h.localClosed(3) == [.close(3), sentConnectionReset(1, "SSH", c: 3)])
        #expect(h.localClosed(2) == [.close(2), sentConnectionReset(1, "SSH", c: 2)])
        // Every connection closed, the stream remains; ids are never reused in the session.
        #expect(h.session.connectionCount == 0)
        #expect(h.accept() == [.accepted(4), sentConnectionStart(1, "SSH", c: 4)])
        #expect(h.session.nextStreamId == 2)
    }

    @Test func v3StreamResetMakesTheNextAcceptStartANewStream() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"])
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.accept() == [.accepted(2), sentConnectionStart(1, "SSH", c: 2)])
        #expect(h.streamReset(1, "SSH") == [.reset(1), .reset(2)])
        #expect(h.logged(.info, "1"))
        #expect(h.session.connectionCount == 0)
        // The runtime reports the sockets it closed: no reset goes back.
        #expect(h.localClosed(1) == [])
        #expect(h.localClosed(2) == [])
        #expect(h.accept() == [.accepted(3), sentStreamStart(2, "SSH", c: 3)])
        #expect(h.accept() == [.accepted(4), sentConnectionStart(2, "SSH", c: 4)])
        #expect(h.data(1, "SSH", c: 1, "old") == [])
        #expect(h.data(2, "SSH", c: 3, "new") == [deliver(3, "new")])
        #expect(h.session.nextStreamId == 3)
    }

    @Test func sessionResetClosesEverythingAndForgetsTheStreams() {
        let h = Harness([named("SSH", 2222), named("HTTP", 8080)], tunnel: ["SSH", "HTTP"])
        #expect(h.accept(0) == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.accept(0) == [.accepted(2), sentConnectionStart(1, "SSH", c: 2)])
        #expect(h.accept(1) == [.accepted(3), sentStreamStart(2, "HTTP", c: 1)])
        #expect(h.sessionReset() == [.reset(1), .reset(2), .reset(3)])
        #expect(h.session.connectionCount == 0)
        #expect(h.header(1) == nil && h.header(2) == nil && h.header(3) == nil)
        #expect(h.data(1, "SSH", c: 1, "x") == [] && h.data(2, "HTTP", c: 1, "x") == [])
        #expect(h.localClosed(2) == [])
        // Connection ids are per service and keep counting; stream ids come from one counter.
        #expect(h.accept(1) == [.accepted(4), sentStreamStart(3, "HTTP", c: 2)])
        #expect(h.accept(0) == [.accepted(5), sentStreamStart(4, "SSH", c: 3)])
        // Nothing active: a second reset has nothing to close.
        #expect(h.sessionReset() == [.reset(4), .reset(5)])
        #expect(h.sessionReset() == [])
    }

    // MARK: Stream ids across sessions (§16.11)

    @Test func streamIdsContinueFromTheFirstStreamId() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"], firstStreamId: 42)
        #expect(h.session.nextStreamId == 42)
        #expect(h.accept() == [.accepted(1), sentStreamStart(42, "SSH", c: 1)])
        #expect(h.session.nextStreamId == 43)
        // Joining the stream takes no stream id.
        #expect(h.accept() == [.accepted(2), sentConnectionStart(42, "SSH", c: 2)])
        #expect(h.session.nextStreamId == 43)
        #expect(h.streamReset(42, "SSH") == [.reset(1), .reset(2)])
        #expect(h.accept() == [.accepted(3), sentStreamStart(43, "SSH", c: 3)])
        #expect(h.session.nextStreamId == 44)

        // The runtime's next session (after a reconnect) continues from there; local ids too.
        let next = Harness([named("SSH", 2222)], firstStreamId: h.session.nextStreamId,
                           firstLocalId: h.session.nextLocalConnectionId)
        #expect(next.serviceIds(["SSH"]) == [.listen(0, "SSH", 2222)])
        #expect(next.accept() == [.accepted(4), sentStreamStart(44, "SSH", c: 1)])
    }

    @Test func streamIdsWrapFromInt32MaxToOne() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"], format: .v2, firstStreamId: Int32.max - 1)
        #expect(h.accept() == [.accepted(1), sentStreamStart(Int32.max - 1, "SSH")])
        #expect(h.accept() == [.accepted(2), .close(1), sentStreamStart(Int32.max, "SSH")])
        #expect(h.session.nextStreamId == 1)
        #expect(h.accept() == [.accepted(3), .close(2), sentStreamStart(1, "SSH")])
        #expect(h.session.nextStreamId == 2)
    }

    @Test("a first stream id below 1 starts at 1", arguments: [Int32(0), -1, Int32.min])
    func firstStreamIdIsAtLeastOne(first: Int32) {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"], firstStreamId: first)
        #expect(h.session.nextStreamId == 1)
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
    }

    // MARK: -y V1 / V2

    @Test func v1EveryConnectionIsItsOwnStreamWithoutServiceOrConnectionId() {
        let h = Harness([unnamed(5555)], tunnel: ["SSH"], format: .v1)
        #expect(h.accept() == [.accepted(1), sentStreamStart(1)])
        #expect(h.header(1) == dataHeader(1))
        #expect(h.data(1, "x") == [deliver(1, "x")])
        // The next connection replaces the previous one, as a V1 destination will.
        #expect(h.accept() == [.accepted(2), .close(1), sentStreamStart(2)])
        #expect(h.logged(.info, "V1"))
        #expect(h.session.connectionCount == 1)
        #expect(h.header(1) == nil)
        #expect(h.header(2) == dataHeader(2))
        #expect(h.localClosed(1) == [])
        #expect(h.data(1, "old") == [])
        #expect(h.data(2, "new") == [deliver(2, "new")])
        #expect(h.localClosed(2) == [.close(2), sentStreamReset(2)])
        #expect(h.header(2) == nil)
        // Nothing to replace now.
        #expect(h.accept() == [.accepted(3), sentStreamStart(3)])
        #expect(h.streamReset(3) == [.close(3)])
        #expect(h.localClosed(3) == [])
    }

    @Test func v2CarriesTheServiceIdButNoConnectionId() {
        let h = Harness([named("SSH", 2222), named("HTTP", 8080)], tunnel: ["SSH", "HTTP"], format: .v2)
        #expect(h.accept(0) == [.accepted(1), sentStreamStart(1, "SSH")])
        // Another service's stream is separate and replaces nothing.
        #expect(h.accept(1) == [.accepted(2), sentStreamStart(2, "HTTP")])
        #expect(h.accept(0) == [.accepted(3), .close(1), sentStreamStart(3, "SSH")])
        #expect(h.session.connectionCount == 2)
        #expect(h.header(3) == dataHeader(3, "SSH"))
        #expect(h.header(2) == dataHeader(2, "HTTP"))
        #expect(h.data(3, "SSH", "s") == [deliver(3, "s")])
        #expect(h.data(2, "HTTP", "h") == [deliver(2, "h")])
        #expect(h.data(1, "SSH", "old") == [])
        #expect(h.localClosed(3) == [.close(3), sentStreamReset(3, "SSH")])
        #expect(h.data(2, "HTTP", "h2") == [deliver(2, "h2")])
        #expect(h.streamReset(2, "HTTP") == [.close(2)])
        #expect(h.session.connectionCount == 0)
        #expect(h.accept(0) == [.accepted(4), sentStreamStart(4, "SSH")])
    }

    // MARK: DATA routing

    @Test func v3DataGoesToTheAddressedConnection() {
        let h = Harness([named("SSH", 2222), named("HTTP", 8080)], tunnel: ["SSH", "HTTP"])
        #expect(h.accept(0) == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.accept(0) == [.accepted(2), sentConnectionStart(1, "SSH", c: 2)])
        #expect(h.data(1, "SSH", c: 2, "two") == [deliver(2, "two")])
        #expect(h.data(1, "SSH", c: 1, "one") == [deliver(1, "one")])
        // Connection id 0 (absent) means connection 1.
        #expect(h.data(1, "SSH", c: 0, "zero") == [deliver(1, "zero")])
        #expect(h.data(1, "SSH", c: 9, "unknown connection") == [])
        #expect(h.data(7, "SSH", c: 1, "unknown stream") == [])
        #expect(h.data(1, "HTTP", c: 1, "service without stream") == [])
        #expect(h.data(1, "VNC", c: 1, "service not in the tunnel") == [])
        #expect(h.data(1, "SSH", c: 1, "") == [])
        #expect(h.localClosed(1) == [.close(1), sentConnectionReset(1, "SSH", c: 1)])
        #expect(h.data(1, "SSH", c: 0, "zero after close") == [])
        #expect(h.data(1, "SSH", c: 2, "still open") == [deliver(2, "still open")])
    }

    @Test func dataWithoutServiceIdGoesToTheOnlyService() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"])
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.accept() == [.accepted(2), sentConnectionStart(1, "SSH", c: 2)])
        #expect(h.data(1, c: 2, "b") == [deliver(2, "b")])
        #expect(h.data(1, "a") == [deliver(1, "a")])
        #expect(h.data(2, "wrong stream") == [])
    }

    @Test func dataWithoutServiceIdGoesToTheServiceWhoseStreamItNames() {
        let h = Harness([named("SSH", 2222), named("HTTP", 8080)], tunnel: ["SSH", "HTTP"])
        #expect(h.accept(0) == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.accept(1) == [.accepted(2), sentStreamStart(2, "HTTP", c: 1)])
        #expect(h.data(2, c: 1, "h") == [deliver(2, "h")])
        #expect(h.data(1, c: 1, "s") == [deliver(1, "s")])
        #expect(h.data(3, c: 1, "nobody") == [])
    }

    @Test("V1/V2 DATA goes to the service's single connection", arguments: ["V1", "V2"])
    func oldFormatDataGoesToTheSingleConnection(name: String) {
        let format = messageFormat(name)
        let h = Harness([unnamed(5555)], tunnel: ["SSH"], format: format)
        let service = format == .v1 ? "" : "SSH"
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, service)])
        #expect(h.data(1, service, "x") == [deliver(1, "x")])
        // A V1 destination sends no service id even where the source sent one.
        #expect(h.data(1, "y") == [deliver(1, "y")])
        #expect(h.accept() == [.accepted(2), .close(1), sentStreamStart(2, service)])
        #expect(h.data(2, service, "z") == [deliver(2, "z")])
        #expect(h.data(1, service, "stale") == [])
    }

    // MARK: Resets and local closes

    @Test func connectionResetFromTheDestinationClosesWithoutAnEcho() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"])
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.accept() == [.accepted(2), sentConnectionStart(1, "SSH", c: 2)])
        #expect(h.connectionReset(1, "SSH", c: 2) == [.close(2)])
        #expect(h.header(2) == nil)
        // The runtime reports the socket it closed; nothing goes back.
        #expect(h.localClosed(2) == [])
        #expect(h.connectionReset(1, "SSH", c: 2) == [])
        #expect(h.connectionReset(9, "SSH", c: 1) == [])
        #expect(h.data(1, "SSH", c: 2, "x") == [])
        #expect(h.data(1, "SSH", c: 1, "y") == [deliver(1, "y")])
        #expect(h.accept() == [.accepted(3), sentConnectionStart(1, "SSH", c: 3)])
        // Connection id 0 names connection 1.
        #expect(h.connectionReset(1, "SSH", c: 0) == [.close(1)])
        #expect(h.session.connectionCount == 1)
    }

    @Test func staleStreamResetIsIgnored() {
        let h = Harness([named("SSH", 2222), named("HTTP", 8080)], tunnel: ["SSH", "HTTP"])
        #expect(h.streamReset(1, "SSH") == [])
        #expect(h.accept(0) == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.streamReset(5, "SSH") == [])
        #expect(h.streamReset(1, "HTTP") == [])
        #expect(h.streamReset(1, "VNC") == [])
        #expect(h.streamReset(2) == [])
        #expect(h.session.connectionCount == 1)
        #expect(h.data(1, "SSH", c: 1, "x") == [deliver(1, "x")])
        #expect(h.streamReset(1) == [.reset(1)])
        #expect(h.streamReset(1, "SSH") == [])
    }

    @Test func localCloseResetsOnlyThatConnection() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"])
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.accept() == [.accepted(2), sentConnectionStart(1, "SSH", c: 2)])
        #expect(h.localClosed(1) == [.close(1), sentConnectionReset(1, "SSH", c: 1)])
        #expect(h.localClosed(1) == [])
        #expect(h.localClosed(99) == [])
        #expect(h.header(1) == nil)
        #expect(h.header(2) == dataHeader(1, "SSH", c: 2))
        #expect(h.data(1, "SSH", c: 2, "sibling") == [deliver(2, "sibling")])
        #expect(h.accept() == [.accepted(3), sentConnectionStart(1, "SSH", c: 3)])
    }

    // MARK: Connection limit (§16.12)

    @Test func connectionsBeyondTheLimitAreRefused() {
        let h = Harness([named("SSH", 2222), named("HTTP", 8080)], tunnel: ["SSH", "HTTP"], maximumConnections: 2)
        #expect(h.accept(0) == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.accept(0) == [.accepted(2), sentConnectionStart(1, "SSH", c: 2)])
        #expect(h.accept(0) == [.refused])
        #expect(h.logged(.warning, "SSH", "2"))
        // A refusal takes neither a local id nor a connection id.
        #expect(h.session.nextLocalConnectionId == 3)
        #expect(h.session.connectionCount == 2)
        // The limit is per service.
        #expect(h.accept(1) == [.accepted(3), sentStreamStart(2, "HTTP", c: 1)])
        #expect(h.localClosed(2) == [.close(2), sentConnectionReset(1, "SSH", c: 2)])
        #expect(h.accept(0) == [.accepted(4), sentConnectionStart(1, "SSH", c: 3)])
        #expect(h.accept(0) == [.refused])
        #expect(h.data(1, "SSH", c: 3, "x") == [deliver(4, "x")])
    }

    @Test func acceptBeforeServiceIdsIsRefused() {
        let h = Harness([named("SSH", 2222)])
        #expect(h.accept() == [.refused])
        #expect(h.session.nextLocalConnectionId == 1)
        #expect(h.serviceIds(["SSH"]) == [.listen(0, "SSH", 2222)])
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
    }

    // MARK: Unexpected and unknown messages

    @Test func startsSentToTheSourceAreIgnoredWithAWarning() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"])
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.handle(TunnelMessage(type: .streamStart, streamId: 5, serviceId: Array("SSH".utf8), connectionId: 1)) == [])
        #expect(h.logged(.warning, "STREAM_START"))
        #expect(h.handle(TunnelMessage(type: .connectionStart, streamId: 1, serviceId: Array("SSH".utf8), connectionId: 2)) == [])
        #expect(h.logged(.warning, "CONNECTION_START"))
        #expect(h.session.connectionCount == 1)
        #expect(h.accept() == [.accepted(2), sentConnectionStart(1, "SSH", c: 2)])
    }

    @Test func unknownIgnorableMessageIsDropped() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"])
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.handle(TunnelMessage(type: MessageType(rawValue: 9), streamId: 1, ignorable: true)) == [])
        #expect(h.logged(.debug, "9"))
        #expect(h.data(1, "SSH", c: 1, "x") == [deliver(1, "x")])
    }

    @Test("unknown message not marked ignorable reconnects", arguments: [Int32(9), 0])
    func unknownMessageReconnects(type: Int32) {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"])
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.handle(TunnelMessage(type: MessageType(rawValue: type), streamId: 1)) == [.reconnect(.unknownMessageType(type))])
        // Type 0 is logged by its name, UNKNOWN.
        #expect(h.logged(.error, "\(MessageType(rawValue: type))"))
    }

    // MARK: DATA headers and session end

    @Test("dataHeader carries the fields of the destination's format", arguments: ["V1", "V2", "V3"])
    func dataHeaderFollowsTheFormat(name: String) {
        let format = messageFormat(name)
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"], format: format)
        let service = format == .v1 ? "" : "SSH"
        let connection: UInt32 = format == .v3 ? 1 : 0
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, service, c: connection)])
        #expect(h.header(1) == dataHeader(1, service, c: connection))
        #expect(h.header(2) == nil)
        let reset = format == .v3 ? sentConnectionReset(1, service, c: 1) : sentStreamReset(1, service)
        #expect(h.localClosed(1) == [.close(1), reset])
        #expect(h.header(1) == nil)
    }

    @Test func dataHeaderIsNilAfterTheDestinationResets() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"])
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.accept() == [.accepted(2), sentConnectionStart(1, "SSH", c: 2)])
        #expect(h.accept() == [.accepted(3), sentConnectionStart(1, "SSH", c: 3)])
        #expect(h.connectionReset(1, "SSH", c: 1) == [.close(1)])
        #expect(h.header(1) == nil)
        #expect(h.header(2) == dataHeader(1, "SSH", c: 2))
        #expect(h.streamReset(1, "SSH") == [.reset(2), .reset(3)])
        #expect(h.header(2) == nil && h.header(3) == nil)
    }

    @Test func stalledConnectionIsResetOnBothSidesAndTheStreamLives() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"])
        #expect(h.accept(0) == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.accept(0) == [.accepted(2), sentConnectionStart(1, "SSH", c: 2)])
        #expect(h.stalled(1) == [.reset(1), sentConnectionReset(1, "SSH", c: 1)])
        #expect(h.logged(.warning, "1500 ms", "--stall-timeout-ms"))
        #expect(h.header(1) == nil)
        #expect(h.header(2) == dataHeader(1, "SSH", c: 2))
        // Already forgotten: only the local reset, nothing sent twice.
        #expect(h.stalled(1) == [.reset(1)])
        #expect(h.localClosed(1) == [])
    }

    @Test func overlongServiceIdsAreNotListenedFor() {
        let long = String(repeating: "H", count: TunnelMessage.maximumServiceIdLength + 1)
        let h = Harness([named("SSH", 2222)])
        #expect(h.serviceIds(["SSH", long]) == [.listen(0, "SSH", 2222)])
        #expect(h.logged(.error, "longer than 128 bytes"))
    }

    @Test func closeAllResetsEveryConnection() {
        let h = Harness([named("SSH", 2222), named("HTTP", 8080)], tunnel: ["SSH", "HTTP"])
        #expect(h.accept(0) == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.accept(1) == [.accepted(2), sentStreamStart(2, "HTTP", c: 1)])
        #expect(h.accept(0) == [.accepted(3), sentConnectionStart(1, "SSH", c: 2)])
        #expect(h.closeAll() == [.reset(1), .reset(2), .reset(3)])
        #expect(h.session.connectionCount == 0)
        #expect(h.header(1) == nil && h.header(2) == nil && h.header(3) == nil)
        #expect(h.localClosed(1) == [])
        #expect(h.data(1, "SSH", c: 1, "x") == [])
        #expect(h.closeAll() == [])
        #expect(h.session.nextStreamId == 3)
        #expect(h.session.nextLocalConnectionId == 4)
    }

    // MARK: Half-close linger

    /// DATA for stream 1, service SSH, connection 1 with the payload "answer", as on the wire
    /// (type 1, streamId 1, payload, serviceId, connectionId).
    static let answerForConnection1 = bytes("08 01 10 01 22 06 616e73776572 2a 03 535348 38 01")

    @Test func halfClosedConnectionLingersWhileTheAnswerArrivesThenCloses() throws {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"], lingerMilliseconds: 1500)
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.accept() == [.accepted(2), sentConnectionStart(1, "SSH", c: 2)])
        // The client's FIN: nothing is sent, the connection waits for the answer.
        #expect(h.localEnded(1) == [.linger(1, 1500)])
        #expect(h.localEnded(1) == [], "a second EOF report restarts nothing")
        #expect(h.header(1) == dataHeader(1, "SSH", c: 1))
        // Each answer is delivered and starts the linger over; a sibling's data does not.
        #expect(try h.handle(bytes: Self.answerForConnection1) == [deliver(1, "answer"), .linger(1, 1500)])
        #expect(try h.handle(bytes: Self.answerForConnection1) == [deliver(1, "answer"), .linger(1, 1500)])
        #expect(h.data(1, "SSH", c: 2, "sibling") == [deliver(2, "sibling")])
        // An empty DATA delivers nothing and so does not count as an answer.
        #expect(h.data(1, "SSH", c: 1, "") == [])
        // Quiet for the linger time: closed here, reset at the destination.
        #expect(h.lingerExpired(1) == [.close(1), sentConnectionReset(1, "SSH", c: 1)])
        #expect(h.logged(.debug, "local connection #1", "no answer for 1500 ms after its half-close"))
        #expect(h.header(1) == nil)
        // A timer the runtime did not stop in time changes nothing.
        #expect(h.lingerExpired(1) == [])
        #expect(h.data(1, "SSH", c: 1, "late") == [])
        #expect(h.session.connectionCount == 1)
    }

    @Test func lingerExpiryOfAnOpenOrUnknownConnectionIsIgnored() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"])
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.lingerExpired(1) == [])
        #expect(h.lingerExpired(7) == [])
        #expect(h.data(1, "SSH", c: 1, "x") == [deliver(1, "x")], "an open connection's data starts no linger")
        #expect(h.session.connectionCount == 1)
    }

    @Test func destinationResetEndsTheLingerWithoutAnEcho() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"])
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.accept() == [.accepted(2), sentConnectionStart(1, "SSH", c: 2)])
        #expect(h.localEnded(1) == [.linger(1, 10_000)])
        #expect(h.localEnded(2) == [.linger(2, 10_000)])
        #expect(h.connectionReset(1, "SSH", c: 1) == [.close(1)])
        #expect(h.lingerExpired(1) == [])
        // A stream reset ends the other lingering connection abnormally (V3).
        #expect(h.streamReset(1, "SSH") == [.reset(2)])
        #expect(h.lingerExpired(2) == [])
        #expect(h.session.connectionCount == 0)
    }

    /// A write to a half-closed client failed: it is gone both ways, so the linger ends at once.
    @Test func brokenHalfClosedConnectionIsClosedAtOnce() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"])
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.localEnded(1) == [.linger(1, 10_000)])
        #expect(h.localClosed(1) == [.close(1), sentConnectionReset(1, "SSH", c: 1)])
        #expect(h.lingerExpired(1) == [])
    }

    @Test("V1/V2: the linger ends with STREAM_RESET", arguments: ["V1", "V2"])
    func oldFormatLingerEndsTheStream(name: String) {
        let format = messageFormat(name)
        let service = format == .v1 ? "" : "SSH"
        let h = Harness([unnamed(5555)], tunnel: ["SSH"], format: format, lingerMilliseconds: 0)
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, service)])
        #expect(h.localEnded(1) == [.linger(1, 0)])
        #expect(h.data(1, service, "late answer") == [deliver(1, "late answer"), .linger(1, 0)])
        #expect(h.lingerExpired(1) == [.close(1), sentStreamReset(1, service)])
        // The next connection starts a new stream; nothing is replaced.
        #expect(h.accept() == [.accepted(2), sentStreamStart(2, service)])
    }

    @Test func lingeringConnectionsAreResetWhenTheSessionEnds() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"])
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.localEnded(1) == [.linger(1, 10_000)])
        #expect(h.closeAll() == [.reset(1)])
        #expect(h.lingerExpired(1) == [])
    }

    /// A connection the session no longer knows has no answer to wait for.
    @Test func endOfAConnectionNotInTheSessionClosesIt() {
        let h = Harness([named("SSH", 2222)], tunnel: ["SSH"])
        #expect(h.localEnded(9) == [.close(9)])
    }

    // MARK: Session states

    @Test func sessionStatesFollowTheTable() {
        let h = Harness([named("SSH", 2222)])
        #expect(h.session.state == .awaitingServiceIds)
        #expect(h.serviceIds(["SSH"]) == [.listen(0, "SSH", 2222)])
        #expect(h.session.state == .serving)
        #expect(h.accept() == [.accepted(1), sentStreamStart(1, "SSH", c: 1)])
        #expect(h.handle(TunnelMessage(type: MessageType(rawValue: 9), streamId: 1)) == [.reconnect(.unknownMessageType(9))])
        #expect(h.session.state == .ending(.unknownMessageType(9)))
        // Ending: the peer's messages change nothing and no new connection is taken; the local
        // side of the existing ones is still followed.
        #expect(h.data(1, "SSH", c: 1, "x") == [])
        #expect(h.connectionReset(1, "SSH", c: 1) == [])
        #expect(h.accept() == [.refused])
        #expect(h.localEnded(1) == [.linger(1, 10_000)])
        #expect(h.closeAll() == [.reset(1)])
        #expect(h.session.state == .closed)
        #expect(h.serviceIds(["SSH"]) == [])
        #expect(h.accept() == [.refused])
    }

    @Test func fatalServiceIdsEndTheSession() {
        let h = Harness([unnamed(5555)])
        let reason = SessionEndReason.sourceServiceMismatch(mapped: [""], tunnel: ["SSH1", "SSH2"])
        #expect(h.serviceIds(["SSH1", "SSH2"]) == [.fatal(reason)])
        #expect(h.session.state == .ending(reason))
        // A corrected SERVICE_IDS comes too late: the runtime is already stopping.
        #expect(h.serviceIds(["SSH1"]) == [])
        #expect(h.closeAll() == [])
        #expect(h.session.state == .closed)
    }
}
