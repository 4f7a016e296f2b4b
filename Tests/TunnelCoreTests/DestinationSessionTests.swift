// The destination state machine driven event by event (docs/PROTOCOL.md §7, §8, §11, §17): every test
// states the exact list of actions each event must produce, so an extra or missing reset, close
// or connect fails it. Log lines are kept apart and only checked where a message has to name
// what is wrong.
import Testing
import TunnelCore

// Computed: `Endpoint` is not Sendable, so it cannot be a global constant under Swift 6.
private var ssh: Endpoint { .tcp(host: "127.0.0.1", port: 22) }
private var http: Endpoint { .tcp(host: "10.0.0.1", port: 80) }
private var vnc: Endpoint { .unix(path: "/run/vnc.sock") }

private func unnamed(_ endpoint: Endpoint) -> ServiceMapping { ServiceMapping(serviceId: "", endpoint: endpoint) }
private func named(_ id: String, _ endpoint: Endpoint) -> ServiceMapping { ServiceMapping(serviceId: id, endpoint: endpoint) }

/// An action as a plain value. `DestinationAction.deliver` carries a view that dies with the call
/// that returned it, so its bytes are copied when the action is recorded.
private enum Act: Equatable {
    case connect(UInt32, Endpoint)
    case retry(UInt32, Int)
    case deliver(UInt32, [UInt8])
    case close(UInt32)
    case reset(UInt32)
    case send(Decoded)
    case reconnect(SessionEndReason)
    case fatal(SessionEndReason)
}

private func deliver(_ id: UInt32, _ text: String) -> Act { .deliver(id, Array(text.utf8)) }
private func sentStreamReset(_ stream: Int32, _ service: String = "") -> Act {
    .send(Decoded(type: .streamReset, streamId: stream, serviceId: service))
}
private func sentConnectionReset(_ stream: Int32, _ service: String, _ connection: UInt32) -> Act {
    .send(Decoded(type: .connectionReset, streamId: stream, serviceId: service, connectionId: connection))
}
/// The DATA header the session should hand out for a connection (payload left empty).
private func header(_ stream: Int32, _ service: String = "", _ connection: UInt32 = 0) -> Decoded {
    Decoded(type: .data, streamId: stream, serviceId: service, connectionId: connection)
}

/// Drives one session and turns what it returns into `Act` lists.
private final class Harness {
    let session: DestinationSession
    /// Log lines produced by the most recent event.
    private(set) var logs: [(level: LogLevel, text: String)] = []

    init(_ mappings: [ServiceMapping], retries: Int = 3, delayMilliseconds: Int = 1000,
         maximumConnections: Int = 128, firstLocalId: UInt32 = 1) {
        var settings = DestinationSessionSettings()
        settings.connectRetries = retries
        settings.connectRetryDelayMilliseconds = delayMilliseconds
        settings.maximumConnectionsPerStream = maximumConnections
        session = DestinationSession(mappings: mappings, settings: settings, firstLocalId: firstLocalId)
    }

    private func record(_ body: (inout [DestinationAction]) -> Void) -> [Act] {
        var actions: [DestinationAction] = []
        body(&actions)
        logs = []
        var out: [Act] = []
        for action in actions {
            switch action {
            case .connect(let id, let endpoint): out.append(.connect(id.rawValue, endpoint))
            case .scheduleRetry(let id, let ms): out.append(.retry(id.rawValue, ms))
            case .deliver(let id, let view): out.append(.deliver(id.rawValue, Array(view)))
            case .closeLocal(let id): out.append(.close(id.rawValue))
            case .resetLocal(let id): out.append(.reset(id.rawValue))
            case .send(let message): out.append(.send(Decoded(message)))
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

    /// Whether the last event logged a line at `level` containing every one of `words`.
    func logged(_ level: LogLevel, _ words: String...) -> Bool {
        logs.contains { line in line.level == level && words.allSatisfy { line.text.contains($0) } }
    }

    func handle(_ message: TunnelMessage) -> [Act] { record { session.handle(message, into: &$0) } }

    func serviceIds(_ ids: [String]) -> [Act] {
        handle(TunnelMessage(type: .serviceIds, availableServiceIds: ids.map { Array($0.utf8) }))
    }
    func start(_ stream: Int32, _ service: String = "", c: UInt32 = 0) -> [Act] {
        handle(TunnelMessage(type: .streamStart, streamId: stream, serviceId: Array(service.utf8), connectionId: c))
    }
    func connectionStart(_ stream: Int32, _ service: String, c: UInt32) -> [Act] {
        handle(TunnelMessage(type: .connectionStart, streamId: stream, serviceId: Array(service.utf8), connectionId: c))
    }
    func streamReset(_ stream: Int32, _ service: String = "") -> [Act] {
        handle(TunnelMessage(type: .streamReset, streamId: stream, serviceId: Array(service.utf8)))
    }
    func connectionReset(_ stream: Int32, _ service: String, c: UInt32) -> [Act] {
        handle(TunnelMessage(type: .connectionReset, streamId: stream, serviceId: Array(service.utf8), connectionId: c))
    }
    func sessionReset() -> [Act] { handle(TunnelMessage(type: .sessionReset)) }

    /// V1 DATA (no service id, no connection id).
    func data(_ stream: Int32, _ text: String) -> [Act] { data(stream, "", c: 0, text) }
    /// V2 DATA (no connection id), or V1 when `service` is empty.
    func data(_ stream: Int32, _ service: String, _ text: String) -> [Act] { data(stream, service, c: 0, text) }
    /// DATA whose payload is a view of a buffer that lives only for this call, as off the wire.
    func data(_ stream: Int32, _ service: String, c: UInt32, _ text: String) -> [Act] {
        let payload = Array(text.utf8)
        return payload.withUnsafeBytes { view in
            handle(TunnelMessage(type: .data, streamId: stream, payload: view, serviceId: Array(service.utf8), connectionId: c))
        }
    }

    func connected(_ id: UInt32) -> [Act] { record { session.connected(LocalConnectionID(id), into: &$0) } }
    func failed(_ id: UInt32) -> [Act] {
        record { session.connectFailed(LocalConnectionID(id), reason: "connection refused", into: &$0) }
    }
    func retryFired(_ id: UInt32) -> [Act] { record { session.retryTimerFired(LocalConnectionID(id), into: &$0) } }
    func localClosed(_ id: UInt32) -> [Act] { record { session.localClosed(LocalConnectionID(id), into: &$0) } }
    func stalled(_ id: UInt32) -> [Act] { record { session.localStalled(LocalConnectionID(id), milliseconds: 1500, into: &$0) } }
    func closeAll() -> [Act] { record { session.closeAll(into: &$0) } }

    func header(_ id: UInt32) -> Decoded? { session.dataHeader(for: LocalConnectionID(id)).map { Decoded($0) } }
}

@Suite("Destination session")
struct DestinationSessionTests {
    // MARK: SERVICE_IDS

    @Test func unnamedMappingAdoptsTheTunnelsSingleService() {
        let h = Harness([unnamed(ssh)])
        #expect(h.serviceIds(["SSH"]) == [])
        #expect(h.logged(.info, "SSH", "127.0.0.1:22"))
        #expect(h.session.tunnelServices == ["SSH"])
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.header(1) == header(1, "SSH", 1))
        #expect(h.data(1, "SSH", c: 1, "hi") == [deliver(1, "hi")])
    }

    @Test func unnamedMappingWithSeveralTunnelServicesIsFatal() {
        let h = Harness([unnamed(ssh)])
        let expected = SessionEndReason.serviceMismatch(missing: ["SSH1", "SSH2"], tunnel: ["SSH1", "SSH2"])
        #expect(h.serviceIds(["SSH1", "SSH2"]) == [.fatal(expected)])
        #expect(expected.description.contains("SSH1"))
        #expect(expected.description.contains("SSH2"))
        #expect(expected.description.contains("-d"))
    }

    @Test func namedMappingsMissingATunnelServiceAreFatal() {
        let h = Harness([named("SSH", ssh)])
        let acts = h.serviceIds(["SSH", "HTTP", "VNC"])
        let expected = SessionEndReason.serviceMismatch(missing: ["HTTP", "VNC"], tunnel: ["SSH", "HTTP", "VNC"])
        #expect(acts == [.fatal(expected)])
        let text = expected.description
        #expect(text.contains("HTTP") && text.contains("VNC") && text.contains("-d"), "\(text)")
    }

    @Test func extraLocalMappingsOnlyWarn() {
        let h = Harness([named("SSH", ssh), named("HTTP", http)])
        #expect(h.serviceIds(["SSH"]) == [])
        #expect(h.logged(.warning, "HTTP"))
        #expect(!h.logs.contains { $0.level < .warning }, "no error for a service the tunnel lacks")
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
    }

    @Test func duplicateServiceIdsAreIgnored() {
        // Unnamed mapping: a list that names one service twice still has one service.
        let single = Harness([unnamed(ssh)])
        #expect(single.serviceIds(["SSH", "SSH"]) == [])
        #expect(single.session.tunnelServices == ["SSH"])
        #expect(single.start(1, "SSH", c: 1) == [.connect(1, ssh)])

        let two = Harness([named("SSH", ssh), named("HTTP", http)])
        #expect(two.serviceIds(["SSH", "HTTP", "SSH", "HTTP"]) == [])
        #expect(two.session.tunnelServices == ["SSH", "HTTP"])
    }

    @Test func emptyServiceListWithOneMappingIsAccepted() {
        let bare = Harness([unnamed(ssh)])
        #expect(bare.serviceIds([]) == [])
        #expect(bare.start(1) == [.connect(1, ssh)])

        let one = Harness([named("SSH", ssh)])
        #expect(one.serviceIds([]) == [])
        #expect(one.start(1, "SSH", c: 1) == [.connect(1, ssh)])
    }

    // MARK: Message formats (§11)

    @Test func v1PeerHasNeitherServiceNorConnectionIds() {
        let h = Harness([unnamed(ssh)])
        #expect(h.serviceIds(["SSH"]) == [])
        #expect(h.start(1) == [.connect(1, ssh)])
        #expect(h.connected(1) == [])
        #expect(h.data(1, "abc") == [deliver(1, "abc")])
        // The adopted name must not leak into a V1 peer's messages.
        #expect(h.header(1) == header(1))
        #expect(h.localClosed(1) == [.close(1), sentStreamReset(1)])
        #expect(h.header(1) == nil)
        #expect(h.data(1, "late") == [])
        #expect(h.session.connectionCount == 0)
    }

    @Test func v2PeerHasServiceIdButNoConnectionId() {
        let h = Harness([named("SSH", ssh)])
        #expect(h.serviceIds(["SSH"]) == [])
        #expect(h.start(5, "SSH") == [.connect(1, ssh)])
        #expect(h.connected(1) == [])
        #expect(h.data(5, "SSH", "abc") == [deliver(1, "abc")])
        #expect(h.header(1) == header(5, "SSH"))
        #expect(h.localClosed(1) == [.close(1), sentStreamReset(5, "SSH")])
        #expect(h.data(5, "SSH", "late") == [])
        // V1/V2: the stream ended with its only connection, so a new one needs STREAM_START.
        #expect(h.start(6, "SSH") == [.connect(2, ssh)])
    }

    @Test func v3RoutesDataByConnectionId() {
        let h = Harness([named("SSH", ssh)])
        #expect(h.serviceIds(["SSH"]) == [])
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.connectionStart(1, "SSH", c: 2) == [.connect(2, ssh)])
        #expect(h.connectionStart(1, "SSH", c: 3) == [.connect(3, ssh)])
        #expect(h.data(1, "SSH", c: 2, "two") == [deliver(2, "two")])
        #expect(h.data(1, "SSH", c: 1, "one") == [deliver(1, "one")])
        #expect(h.data(1, "SSH", c: 3, "three") == [deliver(3, "three")])
        #expect(h.header(1) == header(1, "SSH", 1))
        #expect(h.header(2) == header(1, "SSH", 2))
        #expect(h.header(3) == header(1, "SSH", 3))
    }

    @Test func v3LocalCloseResetsOnlyThatConnectionAndTheStreamSurvives() {
        let h = Harness([named("SSH", ssh)])
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.connectionStart(1, "SSH", c: 2) == [.connect(2, ssh)])
        #expect(h.connected(1) == [] && h.connected(2) == [])
        #expect(h.localClosed(2) == [.close(2), sentConnectionReset(1, "SSH", 2)])
        #expect(h.header(2) == nil)
        #expect(h.data(1, "SSH", c: 1, "still") == [deliver(1, "still")])
        #expect(h.data(1, "SSH", c: 2, "gone") == [])
        #expect(h.connectionStart(1, "SSH", c: 2) == [.connect(3, ssh)])
        #expect(h.data(1, "SSH", c: 2, "again") == [deliver(3, "again")])
        // Zero connections left: the stream stays for later CONNECTION_STARTs (§8.4).
        #expect(h.localClosed(1) == [.close(1), sentConnectionReset(1, "SSH", 1)])
        #expect(h.localClosed(3) == [.close(3), sentConnectionReset(1, "SSH", 2)])
        #expect(h.session.connectionCount == 0)
        #expect(h.connectionStart(1, "SSH", c: 4) == [.connect(4, ssh)])
        #expect(h.header(4) == header(1, "SSH", 4))
    }

    @Test func v3ConnectionResetFromThePeerClosesWithoutEcho() {
        let h = Harness([named("SSH", ssh)])
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.connectionStart(1, "SSH", c: 2) == [.connect(2, ssh)])
        #expect(h.connectionReset(1, "SSH", c: 2) == [.close(2)])
        // The runtime's EOF report for the socket it just closed must not send a reset back.
        #expect(h.localClosed(2) == [])
        // Both sides closing at once: a second reset is normal and ignored.
        #expect(h.connectionReset(1, "SSH", c: 2) == [])
        #expect(h.data(1, "SSH", c: 2, "x") == [])
        #expect(h.data(1, "SSH", c: 1, "y") == [deliver(1, "y")])
    }

    @Test func v3DuplicateConnectionStartIsReset() {
        // Both ends must agree the connection is gone: ours is closed along with the reset.
        let h = Harness([named("SSH", ssh)])
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.connectionStart(1, "SSH", c: 2) == [.connect(2, ssh)])
        #expect(h.connectionStart(1, "SSH", c: 2) == [.close(2), sentConnectionReset(1, "SSH", 2)])
        #expect(h.data(1, "SSH", c: 2, "x") == [])
        #expect(h.connectionStart(1, "SSH", c: 1) == [.close(1), sentConnectionReset(1, "SSH", 1)])
        #expect(h.session.connectionCount == 0)
        #expect(h.connectionStart(1, "SSH", c: 3) == [.connect(3, ssh)])
    }

    @Test func v3ConnectionsBeyondTheLimitAreReset() {
        let h = Harness([named("SSH", ssh)], maximumConnections: 2)
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.connectionStart(1, "SSH", c: 2) == [.connect(2, ssh)])
        #expect(h.connectionStart(1, "SSH", c: 3) == [sentConnectionReset(1, "SSH", 3)])
        #expect(h.logged(.warning, "2 connections"))
        #expect(h.data(1, "SSH", c: 3, "x") == [])
        #expect(h.localClosed(2) == [.close(2), sentConnectionReset(1, "SSH", 2)])
        #expect(h.connectionStart(1, "SSH", c: 3) == [.connect(3, ssh)])
    }

    @Test func v3MessagesWithConnectionIdZeroMeanConnectionOne() {
        let h = Harness([named("SSH", ssh)])
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.data(1, "SSH", c: 0, "x") == [deliver(1, "x")])
        // A CONNECTION_START for connection 0 duplicates connection 1: both sides drop it.
        #expect(h.connectionStart(1, "SSH", c: 0) == [.close(1), sentConnectionReset(1, "SSH", 1)])
        #expect(h.connectionReset(1, "SSH", c: 0) == [])
        #expect(h.connectionStart(1, "SSH", c: 0) == [.connect(2, ssh)])
        #expect(h.header(2) == header(1, "SSH", 1))
        #expect(h.data(1, "SSH", c: 0, "y") == [deliver(2, "y")])
    }

    // MARK: Stream lifecycle

    @Test func newerStreamStartReplacesTheStreamAndStartsTheNewOne() {
        let h = Harness([named("SSH", ssh)])
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.connectionStart(1, "SSH", c: 2) == [.connect(2, ssh)])
        // §16.6: the reference only closes; the new stream must start as well.
        #expect(h.start(2, "SSH", c: 1) == [.close(1), .close(2), .connect(3, ssh)])
        #expect(h.header(1) == nil && h.header(2) == nil)
        #expect(h.header(3) == header(2, "SSH", 1))
        #expect(h.data(1, "SSH", c: 1, "old") == [])
        #expect(h.data(2, "SSH", c: 1, "new") == [deliver(3, "new")])
        #expect(h.streamReset(1, "SSH") == [])
        #expect(h.session.connectionCount == 1)
    }

    @Test func newerV1StreamStartReplacesTheStream() {
        let h = Harness([unnamed(ssh)])
        #expect(h.start(1) == [.connect(1, ssh)])
        #expect(h.start(2) == [.close(1), .connect(2, ssh)])
        #expect(h.data(2, "x") == [deliver(2, "x")])
    }

    @Test func repeatedStreamStartIsIgnored() {
        let h = Harness([named("SSH", ssh)])
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.start(1, "SSH", c: 1) == [])
        #expect(h.session.connectionCount == 1)
        #expect(h.data(1, "SSH", c: 1, "x") == [deliver(1, "x")])
    }

    @Test func twoServicesHaveIndependentStreams() {
        let h = Harness([named("SSH", ssh), named("HTTP", http)])
        #expect(h.serviceIds(["SSH", "HTTP"]) == [])
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        // Stream ids are per service: the same id for another service is another stream.
        #expect(h.start(1, "HTTP", c: 1) == [.connect(2, http)])
        #expect(h.data(1, "SSH", c: 1, "s") == [deliver(1, "s")])
        #expect(h.data(1, "HTTP", c: 1, "h") == [deliver(2, "h")])
        #expect(h.header(2) == header(1, "HTTP", 1))
        #expect(h.streamReset(1, "HTTP") == [.reset(2)])
        #expect(h.data(1, "SSH", c: 1, "s2") == [deliver(1, "s2")])
        #expect(h.data(1, "HTTP", c: 1, "h2") == [])
        #expect(h.start(2, "HTTP", c: 1) == [.connect(3, http)])
        #expect(h.connectionStart(1, "SSH", c: 2) == [.connect(4, ssh)])
        #expect(h.sessionReset() == [.reset(1), .reset(3), .reset(4)])
        #expect(h.session.connectionCount == 0)
        #expect(h.data(1, "SSH", c: 1, "x") == [] && h.data(2, "HTTP", c: 1, "x") == [])
    }

    @Test func staleStreamResetIsIgnored() {
        let h = Harness([named("SSH", ssh)])
        #expect(h.streamReset(1, "SSH") == [])
        #expect(h.start(2, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.streamReset(1, "SSH") == [])
        #expect(h.data(2, "SSH", c: 1, "x") == [deliver(1, "x")])
        #expect(h.streamReset(2, "SSH") == [.reset(1)])
        #expect(h.streamReset(2, "SSH") == [])
    }

    @Test func staleOrMisaddressedDataIsDropped() {
        let h = Harness([named("SSH", ssh), named("HTTP", http)])
        #expect(h.data(1, "SSH", c: 1, "before any stream") == [])
        #expect(h.start(2, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.data(1, "SSH", c: 1, "old stream") == [])
        #expect(h.data(2, "SSH", c: 9, "unknown connection") == [])
        #expect(h.data(2, "HTTP", c: 1, "service without stream") == [])
        #expect(h.data(2, "VNC", c: 1, "unmapped service") == [])
        #expect(h.data(2, "SSH", c: 1, "ok") == [deliver(1, "ok")])
    }

    // MARK: Local connect failures

    @Test("connect failures retry, then V1/V2 streams are reset", arguments: ["", "SSH"])
    func connectRetriesThenStreamReset(service: String) {
        let h = Harness([service.isEmpty ? unnamed(ssh) : named(service, ssh)], retries: 2, delayMilliseconds: 250)
        #expect(h.start(7, service) == [.connect(1, ssh)])
        #expect(h.failed(1) == [.retry(1, 250)])
        #expect(h.retryFired(1) == [.connect(1, ssh)])
        #expect(h.failed(1) == [.retry(1, 250)])
        #expect(h.retryFired(1) == [.connect(1, ssh)])
        #expect(h.failed(1) == [.close(1), sentStreamReset(7, service)])
        #expect(h.logged(.error, "127.0.0.1:22", "connection refused"))
        #expect(h.retryFired(1) == [])
        #expect(h.data(7, service, "x") == [])
        #expect(h.session.connectionCount == 0)
    }

    @Test func connectSucceedingOnARetryKeepsTheConnection() {
        let h = Harness([named("SSH", ssh)], retries: 1, delayMilliseconds: 10)
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.failed(1) == [.retry(1, 10)])
        #expect(h.retryFired(1) == [.connect(1, ssh)])
        #expect(h.connected(1) == [])
        #expect(h.retryFired(1) == [])
        #expect(h.data(1, "SSH", c: 1, "x") == [deliver(1, "x")])
    }

    @Test func v3FirstConnectionFailingAloneResetsTheStream() {
        let h = Harness([named("SSH", ssh)], retries: 0)
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.failed(1) == [.close(1), sentStreamReset(1, "SSH")])
        #expect(h.connectionStart(1, "SSH", c: 2) == [])
        #expect(h.start(2, "SSH", c: 1) == [.connect(2, ssh)])
    }

    @Test func v3ConnectionStartFailureResetsOnlyThatConnection() {
        let h = Harness([named("SSH", ssh)], retries: 1, delayMilliseconds: 500)
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.connected(1) == [])
        #expect(h.connectionStart(1, "SSH", c: 2) == [.connect(2, ssh)])
        #expect(h.failed(2) == [.retry(2, 500)])
        #expect(h.retryFired(2) == [.connect(2, ssh)])
        // §16.7: not STREAM_RESET, which would take the sibling down too.
        #expect(h.failed(2) == [.close(2), sentConnectionReset(1, "SSH", 2)])
        #expect(h.data(1, "SSH", c: 1, "sibling") == [deliver(1, "sibling")])
        #expect(h.connectionStart(1, "SSH", c: 3) == [.connect(3, ssh)])
    }

    @Test func v3FirstConnectionFailingWithASiblingResetsOnlyItself() {
        let h = Harness([named("SSH", ssh)], retries: 0)
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.connectionStart(1, "SSH", c: 2) == [.connect(2, ssh)])
        #expect(h.connected(2) == [])
        #expect(h.failed(1) == [.close(1), sentConnectionReset(1, "SSH", 1)])
        #expect(h.data(1, "SSH", c: 2, "sibling") == [deliver(2, "sibling")])
    }

    @Test func connectCompletingAfterItsStreamEndedIsClosed() {
        let h = Harness([named("SSH", ssh)])
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.streamReset(1, "SSH") == [.reset(1)])
        #expect(h.connected(1) == [.close(1)])
        #expect(h.failed(1) == [])
        #expect(h.retryFired(1) == [])

        // Same when the stream was replaced while connecting.
        #expect(h.start(2, "SSH", c: 1) == [.connect(2, ssh)])
        #expect(h.start(3, "SSH", c: 1) == [.close(2), .connect(3, ssh)])
        #expect(h.connected(2) == [.close(2)])
        #expect(h.connected(3) == [])
    }

    // MARK: Unknown and invalid messages

    @Test func unknownIgnorableMessageIsDropped() {
        let h = Harness([named("SSH", ssh)])
        #expect(h.handle(TunnelMessage(type: MessageType(rawValue: 9), streamId: 1, ignorable: true)) == [])
        #expect(h.logged(.debug, "9"))
    }

    @Test func unknownMessageNotMarkedIgnorableReconnects() {
        let h = Harness([named("SSH", ssh)])
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.handle(TunnelMessage(type: MessageType(rawValue: 9), streamId: 1)) == [.reconnect(.unknownMessageType(9))])
        #expect(h.logged(.error, "9"))
    }

    @Test func streamStartForAnUnmappedServiceIsReset() {
        let h = Harness([named("SSH", ssh), named("HTTP", http)])
        #expect(h.start(3, "VNC", c: 1) == [sentStreamReset(3, "VNC")])
        #expect(h.logged(.error, "VNC", "-d"))
        #expect(h.session.connectionCount == 0)
        #expect(h.start(3, "SSH", c: 1) == [.connect(1, ssh)])
    }

    // A service id longer than the framing reserves room for must never be adopted: the first
    // local read would frame its DATA past the reservation.
    @Test func overlongServiceIdIsNeverAdopted() {
        let long = String(repeating: "S", count: TunnelMessage.maximumServiceIdLength + 1)
        let h = Harness([unnamed(ssh)])
        #expect(h.serviceIds([long]) == [])
        #expect(h.logged(.error, "longer than 128 bytes"))
        #expect(h.start(1, long, c: 1) == [sentStreamReset(1, long)])
        #expect(h.logged(.error, "longer than 128 bytes"))
        #expect(h.session.connectionCount == 0)
        // An id of exactly the limit still works.
        let limit = String(repeating: "L", count: TunnelMessage.maximumServiceIdLength)
        #expect(h.start(2, limit, c: 1) == [.connect(1, ssh)])
        #expect(h.header(1) == header(2, limit, 1))
    }

    @Test func overlongServiceIdWithoutServiceIdsIsReset() {
        let long = String(repeating: "x", count: 4000)
        let h = Harness([unnamed(ssh)])
        #expect(h.start(7, long, c: 1) == [sentStreamReset(7, long)])
        #expect(h.session.connectionCount == 0)
        // The log shows a bounded, escaped prefix, not the 4000 bytes.
        #expect(h.logged(.error, "(4000 bytes)"))
    }

    @Test func serviceIdsListIsBounded() {
        let h = Harness([named("SSH", ssh)])
        let many = (0..<1000).map { "S\($0)" } + ["SSH"]
        var message = TunnelMessage(type: .serviceIds)
        message.availableServiceIds = many.map { Array($0.utf8) }
        let (ids, refused) = message.checkedServiceIds
        #expect(ids.count == TunnelMessage.maximumServiceIdCount)
        #expect(refused.count == 1 && refused[0].contains("more than 16"))
        // The mapped SSH is past the limit, so the tunnel's (first 16) services are not mapped.
        #expect(h.serviceIds(many) == [.fatal(.serviceMismatch(missing: ids, tunnel: ids))])
    }

    @Test func peerServiceIdsAreEscapedInLogs() {
        #expect(loggableServiceId(Array("a\nb\"c\\".utf8)) == #""a\x0ab\x22c\x5c""#)
        #expect(loggableServiceId(Array(repeating: 0x41, count: 65)) == "\"" + String(repeating: "A", count: 64) + "\"... (65 bytes)")
    }

    @Test func v1StreamStartWithSeveralMappingsIsReset() {
        let h = Harness([named("SSH", ssh), named("HTTP", http)])
        #expect(h.start(4) == [sentStreamReset(4)])
        #expect(h.logged(.error, "stream 4"))
    }

    @Test func streamStartWithStreamIdZeroIsIgnored() {
        let h = Harness([named("SSH", ssh)])
        #expect(h.start(0, "SSH", c: 1) == [])
        #expect(h.logged(.warning, "stream 0"))
        #expect(h.session.connectionCount == 0)
        #expect(h.data(0, "SSH", c: 1, "x") == [])
    }

    // MARK: Session end and local ids

    @Test func stalledV3ConnectionIsResetAloneAndTheStreamLives() {
        let h = Harness([named("SSH", ssh)])
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.connectionStart(1, "SSH", c: 2) == [.connect(2, ssh)])
        #expect(h.connected(1) == [] && h.connected(2) == [])
        #expect(h.stalled(1) == [.reset(1), sentConnectionReset(1, "SSH", 1)])
        #expect(h.logged(.warning, "1500 ms", "--stall-timeout-ms"))
        #expect(h.data(1, "SSH", c: 1, "late") == [])
        #expect(h.data(1, "SSH", c: 2, "ok") == [deliver(2, "ok")])
        #expect(h.stalled(1) == [.reset(1)])
    }

    @Test func stalledV2ConnectionResetsItsStream() {
        let h = Harness([named("SSH", ssh)])
        #expect(h.start(4, "SSH") == [.connect(1, ssh)])
        #expect(h.connected(1) == [])
        #expect(h.stalled(1) == [.reset(1), sentStreamReset(4, "SSH")])
        #expect(h.header(1) == nil)
        #expect(h.start(5, "SSH") == [.connect(2, ssh)])
    }

    @Test func closeAllResetsEveryConnection() {
        let h = Harness([named("SSH", ssh), named("VNC", vnc)])
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.connectionStart(1, "SSH", c: 2) == [.connect(2, ssh)])
        #expect(h.start(1, "VNC") == [.connect(3, vnc)])
        #expect(h.connected(1) == [] && h.connected(3) == [])
        #expect(h.closeAll() == [.reset(1), .reset(2), .reset(3)])
        #expect(h.session.connectionCount == 0)
        #expect(h.header(1) == nil && h.header(2) == nil && h.header(3) == nil)
        #expect(h.data(1, "SSH", c: 1, "x") == [])
        #expect(h.closeAll() == [])
    }

    @Test func localIdsIncreaseAcrossTheSessionFromTheFirstId() {
        let h = Harness([named("SSH", ssh), named("HTTP", http)], retries: 0, maximumConnections: 2, firstLocalId: 100)
        #expect(h.session.nextLocalConnectionId == 100)
        #expect(h.start(1, "SSH", c: 1) == [.connect(100, ssh)])
        #expect(h.connectionStart(1, "SSH", c: 2) == [.connect(101, ssh)])
        // Refused starts take no id.
        #expect(h.connectionStart(1, "SSH", c: 3) == [sentConnectionReset(1, "SSH", 3)])
        #expect(h.start(9, "VNC", c: 1) == [sentStreamReset(9, "VNC")])
        #expect(h.localClosed(101) == [.close(101), sentConnectionReset(1, "SSH", 2)])
        // A freed connection id is reused by the peer, never the local id.
        #expect(h.connectionStart(1, "SSH", c: 2) == [.connect(102, ssh)])
        #expect(h.start(2, "SSH", c: 1) == [.close(100), .close(102), .connect(103, ssh)])
        #expect(h.start(1, "HTTP") == [.connect(104, http)])
        #expect(h.failed(104) == [.close(104), sentStreamReset(1, "HTTP")])
        #expect(h.sessionReset() == [.reset(103)])
        #expect(h.start(3, "SSH", c: 1) == [.connect(105, ssh)])
        #expect(h.session.nextLocalConnectionId == 106)

        // The runtime's next session continues where this one stopped.
        let next = DestinationSession(mappings: [named("SSH", ssh)], firstLocalId: h.session.nextLocalConnectionId)
        var actions: [DestinationAction] = []
        next.handle(TunnelMessage(type: .streamStart, streamId: 1, serviceId: Array("SSH".utf8), connectionId: 1), into: &actions)
        let ids = actions.compactMap { action -> UInt32? in
            if case .connect(let id, _) = action { return id.rawValue }
            return nil
        }
        #expect(ids == [106])
    }

    // MARK: Leniency

    @Test func namedSingleMappingWorksBeforeServiceIds() {
        let h = Harness([named("SSH", ssh)])
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.data(1, "SSH", c: 1, "x") == [deliver(1, "x")])
        #expect(h.header(1) == header(1, "SSH", 1))
    }

    @Test func unnamedMappingServesAV1PeerBeforeServiceIds() {
        let h = Harness([unnamed(ssh)])
        #expect(h.start(1) == [.connect(1, ssh)])
        #expect(h.data(1, "x") == [deliver(1, "x")])
        #expect(h.header(1) == header(1))
    }

    /// A single unnamed mapping (`-d 22`) means "every connection goes to port 22"; a stream that
    /// names its service before SERVICE_IDS arrived is no reason to refuse it.
    @Test func unnamedMappingServesANamedStreamBeforeServiceIds() {
        let h = Harness([unnamed(ssh)])
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.data(1, "SSH", c: 1, "x") == [deliver(1, "x")])
        #expect(h.header(1) == header(1, "SSH", 1))
    }

    @Test func dataArrivingWhileConnectingIsDelivered() {
        let h = Harness([named("SSH", ssh)])
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.data(1, "SSH", c: 1, "early") == [deliver(1, "early")])
        #expect(h.failed(1) == [.retry(1, 1000)])
        #expect(h.data(1, "SSH", c: 1, "during retry") == [deliver(1, "during retry")])
        #expect(h.retryFired(1) == [.connect(1, ssh)])
        #expect(h.connected(1) == [])
        #expect(h.data(1, "SSH", c: 1, "late") == [deliver(1, "late")])
        // An empty DATA has nothing to deliver.
        #expect(h.data(1, "SSH", c: 1, "") == [])
    }

    // MARK: Session and connection states

    @Test func sessionStatesFollowTheTable() {
        let h = Harness([named("SSH", ssh), named("HTTP", http)])
        #expect(h.session.state == .awaitingServiceIds)
        #expect(h.session.tunnelServices == nil)
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)], "streams are served before SERVICE_IDS")
        #expect(h.serviceIds(["SSH"]) == [])
        #expect(h.session.state == .serving(tunnelServices: ["SSH"]))
        // SERVICE_IDS again is checked again.
        #expect(h.serviceIds(["SSH", "HTTP"]) == [])
        #expect(h.session.state == .serving(tunnelServices: ["SSH", "HTTP"]))
        #expect(h.handle(TunnelMessage(type: MessageType(rawValue: 9), streamId: 1)) == [.reconnect(.unknownMessageType(9))])
        #expect(h.session.state == .ending(.unknownMessageType(9)))
        #expect(h.session.tunnelServices == nil)
        // Ending: the peer's messages change nothing; local events are still followed.
        #expect(h.data(1, "SSH", c: 1, "x") == [])
        #expect(h.start(2, "HTTP") == [])
        #expect(h.connected(1) == [])
        #expect(h.closeAll() == [.reset(1)])
        #expect(h.session.state == .closed)
        #expect(h.start(3, "SSH", c: 1) == [])
        #expect(h.serviceIds(["SSH"]) == [])
        #expect(h.session.state == .closed)
    }

    @Test func fatalServiceIdsEndTheSession() {
        let h = Harness([named("SSH", ssh)])
        let reason = SessionEndReason.serviceMismatch(missing: ["VNC"], tunnel: ["SSH", "VNC"])
        #expect(h.serviceIds(["SSH", "VNC"]) == [.fatal(reason)])
        #expect(h.session.state == .ending(reason))
        #expect(h.start(1, "SSH", c: 1) == [], "the runtime is stopping: no local connection is made")
        #expect(h.closeAll() == [])
        #expect(h.session.state == .closed)
    }

    /// Connect results only mean something while connecting: an open connection neither retries
    /// nor reconnects.
    @Test func connectEventsForAnOpenConnectionAreIgnored() {
        let h = Harness([named("SSH", ssh)], retries: 3)
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.connected(1) == [])
        #expect(h.failed(1) == [])
        #expect(h.retryFired(1) == [])
        #expect(h.data(1, "SSH", c: 1, "x") == [deliver(1, "x")])
        #expect(h.session.connectionCount == 1)
    }

    /// The attempt count lives in the connecting phase: each failure moves to the next attempt
    /// and the log names it, until the last one resets.
    @Test func attemptsAreCountedInTheConnectingPhase() {
        let h = Harness([named("SSH", ssh)], retries: 2, delayMilliseconds: 5)
        #expect(h.start(1, "SSH", c: 1) == [.connect(1, ssh)])
        #expect(h.failed(1) == [.retry(1, 5)])
        #expect(h.logged(.warning, "retry 1 of 2"))
        #expect(h.retryFired(1) == [.connect(1, ssh)])
        #expect(h.failed(1) == [.retry(1, 5)])
        #expect(h.logged(.warning, "retry 2 of 2"))
        #expect(h.retryFired(1) == [.connect(1, ssh)])
        #expect(h.failed(1) == [.close(1), sentStreamReset(1, "SSH")])
        #expect(h.logged(.error, "after 3 attempts"))
    }
}
