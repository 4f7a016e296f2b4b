// Admission of WebSocket upgrades, from request text to the decision: the request checks of
// `Admission` and the token checks of `TunnelRegistry.admit`, including single use.
import Testing
import TunnelCore
@testable import TunnelService

private let key = "dGhlIHNhbXBsZSBub25jZQ=="

/// An upgrade request as text; `extra` lines are added verbatim.
private func request(path: String = "/tunnel?local-proxy-mode=source", token: String? = "TOKEN",
                     protocols: String? = "aws.iot.securetunneling-3.0", extra: [String] = []) -> [UInt8] {
    var lines = ["GET \(path) HTTP/1.1", "Host: localhost", "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: \(key)"]
    if let protocols { lines.append("Sec-WebSocket-Protocol: \(protocols)") }
    if let token { lines.append("access-token: \(token)") }
    lines += extra
    return Array((lines.joined(separator: "\r\n") + "\r\n\r\n").utf8)
}

private func status(_ bytes: [UInt8]) -> Int? {
    if case .failure(let rejection) = Admission.read(bytes) { return rejection.status }
    return nil
}

private func admitted(_ bytes: [UInt8]) -> AdmissionRequest? {
    if case .success(let (_, request)) = Admission.read(bytes) { return request }
    return nil
}

@Suite("Upgrade request checks")
struct AdmissionRequestTests {
    @Test func acceptsAWellFormedRequest() {
        let got = admitted(request(extra: ["client-token: 0123456789abcdef0123456789abcdef"]))
        #expect(got == AdmissionRequest(side: .source, accessToken: "TOKEN",
                                        clientToken: "0123456789abcdef0123456789abcdef",
                                        subprotocol: TunnelSubprotocol.v3))
    }

    @Test func pathMustBeTunnel() {
        #expect(status(request(path: "/other?local-proxy-mode=source")) == 400)
        #expect(status(request(path: "/tunnel/x?local-proxy-mode=source")) == 400)
    }

    @Test func modeMustBeOneValidValue() {
        #expect(status(request(path: "/tunnel")) == 400)
        #expect(status(request(path: "/tunnel?local-proxy-mode=both")) == 400)
        #expect(status(request(path: "/tunnel?local-proxy-mode=source&local-proxy-mode=source")) == 400)
        #expect(admitted(request(path: "/tunnel?x=1&local-proxy-mode=destination"))?.side == .destination)
    }

    @Test func exactlyOneTokenFromHeaderOrCookie() {
        #expect(status(request(token: nil)) == 400)
        #expect(status(request(extra: ["access-token: SECOND"])) == 400)
        #expect(status(request(extra: ["Cookie: awsiot-tunnel-token=SECOND"])) == 400)
        let cookie = admitted(request(token: nil, extra: ["Cookie: a=1; awsiot-tunnel-token=FROMCOOKIE; b=2"]))
        #expect(cookie?.accessToken == "FROMCOOKIE")
        #expect(status(request(token: nil, extra: ["Cookie: awsiot-tunnel-token=A", "Cookie: awsiot-tunnel-token=B"])) == 400)
        // An empty header value is no token at all.
        #expect(status(request(token: "", extra: [])) == 400)
    }

    // Found by the upgrade-request fuzz target: a cookie value can hold a space, which no
    // access-token header can carry, so the same token would be admitted differently.
    @Test func tokensAreVisibleASCIIWithoutSpaces() {
        #expect(status(request(token: nil, extra: ["Cookie: awsiot-tunnel-token= LEADING"])) == 400)
        #expect(status(request(token: nil, extra: ["Cookie: awsiot-tunnel-token=A B"])) == 400)
        #expect(admitted(request(token: nil, extra: ["Cookie: awsiot-tunnel-token=AQGA\"x"]))?.accessToken == "AQGA\"x")
    }

    @Test func clientTokenFormatAndCount() {
        #expect(status(request(extra: ["client-token: short"])) == 400)
        #expect(status(request(extra: ["client-token: " + String(repeating: "a", count: 129)])) == 400)
        #expect(status(request(extra: ["client-token: " + String(repeating: "a", count: 31) + "_"])) == 400)
        let ok = String(repeating: "a", count: 32)
        #expect(status(request(extra: ["client-token: \(ok)", "client-token: \(ok)"])) == 400)
        #expect(admitted(request(extra: ["client-token: \(String(repeating: "Z-9", count: 42) + "ab")"])) != nil)
    }

    @Test func subprotocolIsTheHighestOffered() {
        #expect(status(request(protocols: nil)) == 400)
        #expect(status(request(protocols: "chat, superchat")) == 400)
        #expect(admitted(request(protocols: "aws.iot.securetunneling-1.0, aws.iot.securetunneling-2.0"))?.subprotocol == TunnelSubprotocol.v2)
        #expect(admitted(request(protocols: "chat, aws.iot.securetunneling-1.0"))?.subprotocol == TunnelSubprotocol.v1)
        #expect(admitted(request(protocols: "aws.iot.securetunneling-1.0",
                                 extra: ["Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0"]))?.subprotocol == TunnelSubprotocol.v3)
    }

    @Test func headOver4096BytesIs431() {
        let padding = String(repeating: "p", count: 4096)
        #expect(status(request(extra: ["X-Padding: \(padding)"])) == 431)
        let bytes = request(extra: ["X-Padding: " + String(repeating: "p", count: 3000)])
        #expect(bytes.count < 4096)
        #expect(admitted(bytes) != nil)
    }

    @Test func malformedAndNonWebSocketRequests() {
        #expect(status(Array("garbage\r\n\r\n".utf8)) == 400)
        #expect(status(Array("GET /tunnel HTTP/1.1\nHost: x\n\n".utf8)) == 400)
        #expect(status(Array("POST /tunnel?local-proxy-mode=source HTTP/1.1\r\n\r\n".utf8)) == 405)
        var noUpgrade = request()
        noUpgrade = Array(String(decoding: noUpgrade, as: UTF8.self).replacingOccurrences("Upgrade: websocket\r\n", "").utf8)
        #expect(status(noUpgrade) == 400)
        #expect(status(Array(String(decoding: request(), as: UTF8.self).replacingOccurrences("Version: 13", "Version: 8").utf8)) == 426)
    }

    @Test func everyRefusalHasATextBody() {
        for bytes in [request(path: "/x"), request(token: nil), request(protocols: "x"), Array("x\r\n\r\n".utf8)] {
            guard case .failure(let rejection) = Admission.read(bytes) else {
                Issue.record("accepted")
                continue
            }
            #expect(!rejection.body.isEmpty)
        }
    }

    @Test func channelIdsHaveTheServiceShapeAndAreUnique() {
        var generator = ChannelIdGenerator(instance: 0x0ea2_b3ff_fe6a_dc0e, processId: 0x125a)
        let first = generator.next(random: 0xc2f2_18c3_5b92_1565, epochSeconds: 0x17c8_07e1)
        let second = generator.next(random: 0xc2f2_18c3_5b92_1565, epochSeconds: 0x17c8_07e1)
        #expect(first == "0ea2b3fffe6adc0e-0000125a-00000001-c2f218c35b921565-17c807e1")
        #expect(second != first)
        let groups = second.split(separator: "-").map(\.count)
        #expect(groups == [16, 8, 8, 16, 8])
    }
}

extension String {
    func replacingOccurrences(_ target: String, _ replacement: String) -> String {
        var out = ""
        var rest = self[...]
        while let range = rest.range(of: target) {
            out += rest[..<range.lowerBound] + replacement
            rest = rest[range.upperBound...]
        }
        return out + rest
    }
}

/// A registry with predictable ids and tokens.
func makeRegistry(minuteSeconds: Double = 60, maximumOpenTunnels: Int = 300) -> TunnelRegistry {
    var tokenCounter = 0
    var idCounter = 0
    return TunnelRegistry(region: "us-east-1", minuteSeconds: minuteSeconds, maximumOpenTunnels: maximumOpenTunnels,
                          makeToken: { tokenCounter += 1; return "token-\(tokenCounter)" },
                          makeTunnelId: { idCounter += 1; return "tunnel-\(idCounter)" })
}

private func ask(_ token: String, _ side: Side = .source, clientToken: String? = nil) -> AdmissionRequest {
    AdmissionRequest(side: side, accessToken: token, clientToken: clientToken, subprotocol: TunnelSubprotocol.v3)
}

private func rejection(_ result: Result<TunnelRegistry.Admitted, Rejection>) -> Rejection? {
    if case .failure(let r) = result { return r }
    return nil
}

@Suite("Token admission and single use")
struct TokenAdmissionTests {
    let clientA = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
    let clientB = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"

    @Test func firstUseSucceedsAndReportsServices() throws {
        let registry = makeRegistry()
        let opened = try registry.open(description: nil, tags: [], destinationConfig: DestinationConfig(thingName: nil, services: ["SSH"]),
                                       lifetimeMinutes: nil, now: 100)
        guard case .success(let admitted) = registry.admit(ask(opened.destinationAccessToken, .destination)) else {
            Issue.record("refused")
            return
        }
        #expect(admitted == TunnelRegistry.Admitted(tunnelId: opened.tunnel.tunnelId, side: .destination, services: ["SSH"], reused: false))
    }

    @Test func withoutClientTokenASecondUseIsRefused() throws {
        let registry = makeRegistry()
        let token = try registry.open(description: nil, tags: [], destinationConfig: nil, lifetimeMinutes: nil, now: 0).sourceAccessToken
        #expect(rejection(registry.admit(ask(token))) == nil)
        #expect(rejection(registry.admit(ask(token))) == .tokenPreviouslyUsed)
        // Presenting a client token now does not help: none was bound.
        #expect(rejection(registry.admit(ask(token, clientToken: clientA))) == .tokenPreviouslyUsed)
    }

    @Test func withClientTokenOnlyTheSameOneMayReuse() throws {
        let registry = makeRegistry()
        let token = try registry.open(description: nil, tags: [], destinationConfig: nil, lifetimeMinutes: nil, now: 0).sourceAccessToken
        #expect(rejection(registry.admit(ask(token, clientToken: clientA))) == nil)
        guard case .success(let again) = registry.admit(ask(token, clientToken: clientA)) else {
            Issue.record("refused the same client token")
            return
        }
        #expect(again.reused)
        #expect(rejection(registry.admit(ask(token, clientToken: clientB))) == .clientTokenMismatch)
        #expect(rejection(registry.admit(ask(token))) == .clientTokenMismatch)
    }

    @Test func unknownWrongModeClosedAndRevokedTokens() throws {
        let registry = makeRegistry()
        let opened = try registry.open(description: nil, tags: [], destinationConfig: nil, lifetimeMinutes: nil, now: 0)
        #expect(rejection(registry.admit(ask("nope")))?.status == 401)
        #expect(rejection(registry.admit(ask(opened.sourceAccessToken, .destination)))?.status == 400)
        let rotated = try registry.rotate(opened.tunnel.tunnelId, sides: [.source], destinationConfig: nil, now: 1)
        #expect(rejection(registry.admit(ask(opened.sourceAccessToken))) == .revokedToken)
        #expect(rejection(registry.admit(ask(rotated.tokens[.source]!))) == nil)
        // The destination token was not rotated and was never used.
        #expect(rejection(registry.admit(ask(opened.destinationAccessToken, .destination))) == nil)
        _ = try registry.close(opened.tunnel.tunnelId, delete: false, now: 2)
        #expect(rejection(registry.admit(ask(rotated.tokens[.source]!))) == .tunnelClosed)
        _ = try registry.close(opened.tunnel.tunnelId, delete: true, now: 3)
        #expect(rejection(registry.admit(ask(rotated.tokens[.source]!))) == .unknownToken)
    }

    @Test func expiredTunnelsRefuseWith410() throws {
        let registry = makeRegistry(minuteSeconds: 1)
        let opened = try registry.open(description: nil, tags: [], destinationConfig: nil, lifetimeMinutes: 2, now: 10)
        #expect(registry.nextDeadline() == 12)
        #expect(registry.expireDue(now: 11.9).isEmpty)
        let effects = registry.expireDue(now: 12)
        #expect(effects == [.disconnect(tunnelId: opened.tunnel.tunnelId, sides: [.source, .destination], code: 1000, reason: "tunnel expired"),
                            .forget(tunnelId: opened.tunnel.tunnelId)])
        #expect(rejection(registry.admit(ask(opened.sourceAccessToken))) == .tunnelExpired)
        #expect(registry.nextDeadline() == nil)
    }

    @Test func tokenUseSurvivesASnapshot() throws {
        let registry = makeRegistry()
        let opened = try registry.open(description: "d", tags: [Tag(key: "k", value: "v")], destinationConfig: nil,
                                       lifetimeMinutes: 5, now: 0)
        _ = registry.admit(ask(opened.sourceAccessToken, clientToken: clientA))
        registry.setConnected(opened.tunnel.tunnelId, side: .source, connected: true, now: 1)
        let restored = makeRegistry()
        restored.restore(registry.snapshot(), now: 50)
        #expect(rejection(restored.admit(ask(opened.sourceAccessToken))) == .clientTokenMismatch)
        #expect(rejection(restored.admit(ask(opened.sourceAccessToken, clientToken: clientA))) == nil)
        let record = try restored.describe(opened.tunnel.tunnelId)
        #expect(record.sourceConnection == ConnectionState(connected: false, lastUpdatedAt: 50))
        #expect(record.tags == [Tag(key: "k", value: "v")])
        // New tunnels continue the sequence rather than reusing it.
        let next = try restored.open(description: nil, tags: [], destinationConfig: nil, lifetimeMinutes: nil, now: 60)
        #expect(next.tunnel.sequence > record.sequence)
    }
}
