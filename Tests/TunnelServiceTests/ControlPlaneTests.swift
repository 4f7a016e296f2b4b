// The control plane's request handling: operations, model constraints, error shapes, paging,
// credentials, and the effects handed to the data plane. No sockets: target, headers and body in,
// status and JSON out.
import Testing
import TunnelCore
@testable import TunnelService

private let authorization = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/IoTSecuredTunneling/aws4_request, SignedHeaders=host, Signature=ab"

private final class Harness {
    let registry = makeRegistry()
    let plane: ControlPlane
    var now = 1_700_000_000.5

    init(requiredAccessKeyId: String? = nil) {
        plane = ControlPlane(registry: registry, requiredAccessKeyId: requiredAccessKeyId)
    }

    func call(_ operation: String, _ json: String = "{}", authorization: String? = authorization) -> ControlPlane.Response {
        plane.handle(target: "IoTSecuredTunneling.\(operation)", authorization: authorization, body: Array(json.utf8), now: now)
    }

    func ok(_ operation: String, _ json: String = "{}") -> [String: JSONValue] {
        let response = call(operation, json)
        #expect(response.status == 200, "\(operation): \(response.body.serialized)")
        guard case .object(let members) = response.body else {
            Issue.record("\(operation) answered \(response.body.serialized), not a JSON object")
            return [:]
        }
        return members
    }

    func error(_ operation: String, _ json: String = "{}") -> String? { call(operation, json).errorType }
}

private func string(_ value: JSONValue?) -> String? {
    if case .string(let s)? = value { return s }
    return nil
}

/// The members of a JSON object; anything else fails the test (and gives no members).
private func object(_ value: JSONValue?, sourceLocation: SourceLocation = #_sourceLocation) -> [String: JSONValue] {
    if case .object(let m)? = value { return m }
    Issue.record("expected a JSON object, got \(value.map { $0.serialized } ?? "nothing")", sourceLocation: sourceLocation)
    return [:]
}

/// The elements of a JSON array; anything else fails the test (and gives no elements).
private func array(_ value: JSONValue?, sourceLocation: SourceLocation = #_sourceLocation) -> [JSONValue] {
    if case .array(let a)? = value { return a }
    Issue.record("expected a JSON array, got \(value.map { $0.serialized } ?? "nothing")", sourceLocation: sourceLocation)
    return []
}

@Suite("Control plane")
struct ControlPlaneTests {
    @Test func openAndDescribe() {
        let h = Harness()
        let opened = h.ok("OpenTunnel", #"{"description":"d","destinationConfig":{"thingName":"t1","services":["SSH","HTTP"]},"timeoutConfig":{"maxLifetimeTimeoutMinutes":30},"tags":[{"key":"a","value":"1"}]}"#)
        #expect(string(opened["tunnelId"]) == "tunnel-1")
        #expect(string(opened["tunnelArn"]) == "arn:aws:iot:us-east-1:123456789012:tunnel/tunnel-1")
        #expect(string(opened["sourceAccessToken"]) == "token-1")
        #expect(string(opened["destinationAccessToken"]) == "token-2")
        let tunnel = object(h.ok("DescribeTunnel", #"{"tunnelId":"tunnel-1"}"#)["tunnel"])
        #expect(string(tunnel["status"]) == "OPEN")
        #expect(string(tunnel["description"]) == "d")
        #expect(tunnel["timeoutConfig"] == .object(["maxLifetimeTimeoutMinutes": .number(30)]))
        #expect(tunnel["destinationConfig"] == .object(["thingName": .string("t1"), "services": .array([.string("SSH"), .string("HTTP")])]))
        #expect(tunnel["createdAt"] == .number(1_700_000_000.5))
        #expect(object(tunnel["sourceConnectionState"])["status"] == .string("DISCONNECTED"))
        #expect(array(tunnel["tags"]).count == 1)
    }

    @Test func defaultsAndOptionalMembers() {
        let h = Harness()
        _ = h.ok("OpenTunnel")
        let tunnel = object(h.ok("DescribeTunnel", #"{"tunnelId":"tunnel-1"}"#)["tunnel"])
        #expect(tunnel["timeoutConfig"] == .object(["maxLifetimeTimeoutMinutes": .number(720)]))
        #expect(tunnel["description"] == nil && tunnel["destinationConfig"] == nil && tunnel["tags"] == nil)
        // An empty body is an empty request.
        #expect(h.plane.handle(target: "IoTSecuredTunneling.ListTunnels", authorization: nil, body: [], now: 0).status == 200)
    }

    @Test func modelConstraintsAreEnforced() {
        let h = Harness()
        #expect(h.error("OpenTunnel", #"{"timeoutConfig":{"maxLifetimeTimeoutMinutes":0}}"#) == "ValidationException")
        #expect(h.error("OpenTunnel", #"{"timeoutConfig":{"maxLifetimeTimeoutMinutes":721}}"#) == "ValidationException")
        #expect(h.error("OpenTunnel", #"{"timeoutConfig":{"maxLifetimeTimeoutMinutes":1.5}}"#) == "SerializationException")
        #expect(h.error("OpenTunnel", #"{"destinationConfig":{"services":[]}}"#) == "ValidationException")
        #expect(h.error("OpenTunnel", #"{"destinationConfig":{}}"#) == "ValidationException")
        #expect(h.error("OpenTunnel", #"{"destinationConfig":{"services":["a b"]}}"#) == "ValidationException")
        #expect(h.error("OpenTunnel", #"{"destinationConfig":{"services":["SSH","SSH"]}}"#) == "ValidationException")
        #expect(h.error("OpenTunnel", #"{"destinationConfig":{"services":["A","B","C","D"]}}"#) == "LimitExceededException")
        let longName = String(repeating: "s", count: 129)
        #expect(h.error("OpenTunnel", #"{"destinationConfig":{"services":["\#(longName)"]}}"#) == "ValidationException")
        #expect(h.error("OpenTunnel", #"{"destinationConfig":{"thingName":"bad/thing","services":["SSH"]}}"#) == "ValidationException")
        #expect(h.error("OpenTunnel", #"{"description":""}"#) == "ValidationException")
        #expect(h.error("OpenTunnel", #"{"description":"tab\there"}"#) == "ValidationException")
        #expect(h.error("OpenTunnel", #"{"tags":[]}"#) == "ValidationException")
        #expect(h.error("OpenTunnel", #"{"tags":[{"key":"","value":"x"}]}"#) == "ValidationException")
        #expect(h.error("OpenTunnel", #"{"tags":[{"key":"k!","value":"x"}]}"#) == "ValidationException")
        #expect(h.error("OpenTunnel", #"{"tags":[{"key":"k"}]}"#) == "ValidationException")
        #expect(h.error("OpenTunnel", #"{"description":5}"#) == "SerializationException")
        #expect(h.error("OpenTunnel", "[1]") == "SerializationException")
        #expect(h.error("OpenTunnel", "{not json") == "SerializationException")
        #expect(h.error("DescribeTunnel") == "ValidationException")
        #expect(h.error("DescribeTunnel", #"{"tunnelId":"has space"}"#) == "ValidationException")
        #expect(h.error("CloseTunnel", #"{"tunnelId":"x","delete":"yes"}"#) == "SerializationException")
        #expect(h.error("RotateTunnelAccessToken", #"{"tunnelId":"x","clientMode":"BOTH"}"#) == "ValidationException")
        // Unicode letters, spaces and the listed punctuation are fine in tags and descriptions.
        _ = h.ok("OpenTunnel", #"{"description":"Zugang für Gerät 7","tags":[{"key":"Ort: Zürich/2","value":"a+b=c @ d_e-f.g"}]}"#)
    }

    @Test func errorsHaveTheAWSShape() {
        let h = Harness()
        let response = h.call("DescribeTunnel", #"{"tunnelId":"missing"}"#)
        #expect(response.status == 400)
        #expect(response.body == .object(["__type": .string("ResourceNotFoundException"), "message": .string("Tunnel missing not found.")]))
        #expect(h.plane.handle(target: nil, authorization: nil, body: [], now: 0).errorType == "UnknownOperationException")
        #expect(h.error("Frobnicate") == "UnknownOperationException")
    }

    @Test func listingPagesNewestFirstAndFilters() {
        let h = Harness()
        for i in 0..<5 {
            _ = h.ok("OpenTunnel", i % 2 == 0 ? #"{"destinationConfig":{"thingName":"even","services":["SSH"]}}"# : "{}")
        }
        var seen: [String] = []
        var token: String? = nil
        repeat {
            let body = token.map { #"{"maxResults":2,"nextToken":"\#($0)"}"# } ?? #"{"maxResults":2}"#
            let page = h.ok("ListTunnels", body)
            let summaries = array(page["tunnelSummaries"])
            #expect(summaries.count <= 2)
            seen += summaries.compactMap { string(object($0)["tunnelId"]) }
            token = string(page["nextToken"])
        } while token != nil
        #expect(seen == ["tunnel-5", "tunnel-4", "tunnel-3", "tunnel-2", "tunnel-1"])
        let even = array(h.ok("ListTunnels", #"{"thingName":"even"}"#)["tunnelSummaries"])
        #expect(even.compactMap { string(object($0)["tunnelId"]) } == ["tunnel-5", "tunnel-3", "tunnel-1"])
        #expect(h.error("ListTunnels", #"{"maxResults":0}"#) == "ValidationException")
        #expect(h.error("ListTunnels", #"{"maxResults":101}"#) == "ValidationException")
        #expect(h.error("ListTunnels", #"{"nextToken":"page-"}"#) == "ValidationException")
        #expect(h.error("ListTunnels", #"{"nextToken":"nonsense"}"#) == "ValidationException")
    }

    @Test func rotationReturnsOnlyRotatedTokensAndDisconnects() {
        let h = Harness()
        _ = h.ok("OpenTunnel")
        let response = h.call("RotateTunnelAccessToken", #"{"tunnelId":"tunnel-1","clientMode":"DESTINATION"}"#)
        guard case .object(let out) = response.body else {
            Issue.record("RotateTunnelAccessToken answered \(response.body), not an object")
            return
        }
        #expect(Set(out.keys) == ["tunnelArn", "destinationAccessToken"])
        #expect(response.effects == [.disconnect(tunnelId: "tunnel-1", sides: [.destination], code: 1008, reason: "access token rotated")])
        let all = h.call("RotateTunnelAccessToken", #"{"tunnelId":"tunnel-1","clientMode":"ALL","destinationConfig":{"services":["VNC"]}}"#)
        guard case .object(let both) = all.body else {
            Issue.record("RotateTunnelAccessToken (ALL) answered \(all.body), not an object")
            return
        }
        #expect(Set(both.keys) == ["tunnelArn", "sourceAccessToken", "destinationAccessToken"])
        let tunnel = object(h.ok("DescribeTunnel", #"{"tunnelId":"tunnel-1"}"#)["tunnel"])
        #expect(tunnel["destinationConfig"] == .object(["services": .array([.string("VNC")])]))
        #expect(h.error("RotateTunnelAccessToken", #"{"tunnelId":"nope","clientMode":"ALL"}"#) == "ResourceNotFoundException")
    }

    /// A thing name makes the service publish the destination token: on opening, and on each
    /// rotation that covers the destination, after the old connection is closed.
    @Test func destinationTokensAreNotifiedToTheThing() {
        let h = Harness()
        let opened = h.call("OpenTunnel", #"{"destinationConfig":{"thingName":"gw1","services":["SSH","HTTP"]}}"#)
        #expect(opened.effects == [.notifyDestination(thingName: "gw1", accessToken: "token-2", services: ["SSH", "HTTP"])])
        #expect(h.call("OpenTunnel", #"{"destinationConfig":{"services":["SSH"]}}"#).effects.isEmpty, "no thing, no notification")
        #expect(h.call("OpenTunnel").effects.isEmpty)

        #expect(h.call("RotateTunnelAccessToken", #"{"tunnelId":"tunnel-1","clientMode":"SOURCE"}"#).effects
            == [.disconnect(tunnelId: "tunnel-1", sides: [.source], code: 1008, reason: "access token rotated")])
        let rotated = h.call("RotateTunnelAccessToken", #"{"tunnelId":"tunnel-1","clientMode":"DESTINATION"}"#)
        #expect(rotated.effects == [.disconnect(tunnelId: "tunnel-1", sides: [.destination], code: 1008, reason: "access token rotated"),
                                    .notifyDestination(thingName: "gw1", accessToken: "token-8", services: ["SSH", "HTTP"])])
        // The rotation's own destinationConfig replaces the tunnel's, thing and services.
        let moved = h.call("RotateTunnelAccessToken", #"{"tunnelId":"tunnel-1","clientMode":"ALL","destinationConfig":{"thingName":"gw2","services":["VNC"]}}"#)
        #expect(moved.effects == [.disconnect(tunnelId: "tunnel-1", sides: [.source, .destination], code: 1008, reason: "access token rotated"),
                                  .notifyDestination(thingName: "gw2", accessToken: "token-10", services: ["VNC"])])
    }

    @Test func theNotificationPayloadIsTheServicesJSON() throws {
        let payload = TunnelNotifier.payload(accessToken: "AQGA+/=", region: "eu-west-1", services: ["SSH", "HTTP"])
        let parsed = try payload.withUnsafeBytes { (bytes) throws(TunnelNotificationError) in try TunnelNotification.parse(bytes) }
        #expect(parsed == TunnelNotification(clientAccessToken: "AQGA+/=", clientMode: "destination", region: "eu-west-1",
                                             services: ["SSH", "HTTP"]))
        #expect(TunnelNotifier.topic(thing: "gw1") == "$aws/things/gw1/tunnels/notify")
    }

    @Test func closeAndDelete() {
        let h = Harness()
        _ = h.ok("OpenTunnel")
        let closed = h.call("CloseTunnel", #"{"tunnelId":"tunnel-1"}"#)
        #expect(closed.body == .object([:]))
        #expect(closed.effects == [.disconnect(tunnelId: "tunnel-1", sides: [.source, .destination], code: 1000, reason: "tunnel closed"),
                                   .forget(tunnelId: "tunnel-1")])
        #expect(string(object(h.ok("DescribeTunnel", #"{"tunnelId":"tunnel-1"}"#)["tunnel"])["status"]) == "CLOSED")
        // Again: no error, nothing more to do.
        #expect(h.call("CloseTunnel", #"{"tunnelId":"tunnel-1"}"#).effects.isEmpty)
        #expect(h.error("RotateTunnelAccessToken", #"{"tunnelId":"tunnel-1","clientMode":"ALL"}"#) == "ResourceNotFoundException")
        _ = h.ok("CloseTunnel", #"{"tunnelId":"tunnel-1","delete":true}"#)
        #expect(h.error("DescribeTunnel", #"{"tunnelId":"tunnel-1"}"#) == "ResourceNotFoundException")
        #expect(h.error("CloseTunnel", #"{"tunnelId":"tunnel-1"}"#) == "ResourceNotFoundException")
    }

    @Test func tags() {
        let h = Harness()
        let arn = string(h.ok("OpenTunnel", #"{"tags":[{"key":"a","value":"1"}]}"#)["tunnelArn"])!
        _ = h.ok("TagResource", #"{"resourceArn":"\#(arn)","tags":[{"key":"b","value":"2"},{"key":"a","value":"3"}]}"#)
        #expect(h.ok("ListTagsForResource", #"{"resourceArn":"\#(arn)"}"#)["tags"] == .array([
            .object(["key": .string("a"), "value": .string("3")]), .object(["key": .string("b"), "value": .string("2")])]))
        _ = h.ok("UntagResource", #"{"resourceArn":"\#(arn)","tagKeys":["a","zzz"]}"#)
        #expect(h.ok("ListTagsForResource", #"{"resourceArn":"\#(arn)"}"#)["tags"] == .array([
            .object(["key": .string("b"), "value": .string("2")])]))
        #expect(h.error("TagResource", #"{"resourceArn":"arn:aws:iot:us-east-1:123456789012:tunnel/x","tags":[{"key":"a","value":"1"}]}"#) == "ResourceNotFoundException")
        #expect(h.error("TagResource", #"{"resourceArn":"\#(arn)"}"#) == "ValidationException")
        #expect(h.error("UntagResource", #"{"resourceArn":"\#(arn)"}"#) == "ValidationException")
        #expect(h.error("ListTagsForResource", "{}") == "ValidationException")
    }

    @Test func openTunnelLimit() {
        let h = Harness()
        let limited = ControlPlane(registry: makeRegistry(maximumOpenTunnels: 2), requiredAccessKeyId: nil)
        for _ in 0..<2 { #expect(limited.handle(target: "IoTSecuredTunneling.OpenTunnel", authorization: nil, body: [], now: 0).status == 200) }
        #expect(limited.handle(target: "IoTSecuredTunneling.OpenTunnel", authorization: nil, body: [], now: 0).errorType == "LimitExceededException")
        _ = h
    }

    @Test func accessKeyIdRequirement() {
        let h = Harness(requiredAccessKeyId: "AKIDEXAMPLE")
        #expect(h.call("ListTunnels").status == 200)
        let wrong = h.call("ListTunnels", authorization: authorization.replacingOccurrences("AKIDEXAMPLE", "AKIDOTHER"))
        #expect(wrong.status == 403 && wrong.errorType == "UnrecognizedClientException")
        #expect(h.call("ListTunnels", authorization: nil).status == 403)
        #expect(h.call("ListTunnels", authorization: "Bearer nothing").errorType == "UnrecognizedClientException")
        // Without the option any signature, or none, is accepted.
        #expect(Harness().call("ListTunnels", authorization: nil).status == 200)
        #expect(ControlPlane.accessKeyId(fromAuthorization: authorization) == "AKIDEXAMPLE")
        #expect(ControlPlane.accessKeyId(fromAuthorization: "AWS4-HMAC-SHA256 Credential=/x") == nil)
    }

    @Test func jsonOutputIsDeterministicAndEscaped() {
        let value = JSONValue.object(["b": .number(1.5), "a": .array([.bool(true), .null, .number(1_700_000_000)]),
                                      "s": .string("q\"\\\n\u{01}é")])
        #expect(value.serialized == #"{"a":[true,null,1700000000],"b":1.5,"s":"q\"\\\n\u0001é"}"#)
        let parsed = try? JSONValue.parse(Array(#"{"t":true,"n":1,"f":0.5}"#.utf8))
        #expect(parsed == .object(["t": .bool(true), "n": .number(1), "f": .number(0.5)]))
    }
}
