// The control plane's HTTP request reader (fed in every possible cut) and the command line.
import Testing
import TunnelCore
@testable import TunnelService

private enum Parsed: Equatable {
    case request(method: String, target: String, body: [UInt8], keepAlive: Bool)
    case expectContinue
    case failure(Int)
}

/// Feeds `bytes` in pieces of `piece` bytes and collects every event, up to the first failure.
private func parse(_ bytes: [UInt8], piece: Int, maximumBody: Int = 1 << 20) -> [Parsed] {
    var parser = HTTPRequestParser(maximumBody: maximumBody)
    var out: [Parsed] = []
    var offset = 0
    while offset < bytes.count {
        let chunk = Array(bytes[offset..<min(bytes.count, offset + piece)])
        offset += chunk.count
        let failed: Bool = chunk.withUnsafeBytes { raw in
            var input = raw
            while !input.isEmpty {
                let before = input.count
                switch parser.next(&input) {
                case .success(nil):
                    // The reader takes every byte it is given until an event is complete.
                    if input.count == before { Issue.record("no progress"); return true }
                case .success(.expectContinue?):
                    out.append(.expectContinue)
                case .success(.request(let r)?):
                    out.append(.request(method: r.method, target: r.target, body: r.body, keepAlive: r.keepAlive))
                case .failure(let f):
                    out.append(.failure(f.status))
                    return true
                }
            }
            return false
        }
        if failed { break }
    }
    return out
}

private func request(_ body: String, extra: String = "", version: String = "HTTP/1.1") -> String {
    "POST / \(version)\r\nHost: x\r\nX-Amz-Target: IoTSecuredTunneling.ListTunnels\r\nContent-Length: \(body.utf8.count)\r\n\(extra)\r\n\(body)"
}

@Suite("HTTP request reader")
struct HTTPRequestParserTests {
    @Test func pipelinedRequestsInEveryCut() {
        let bytes = Array((request("{}") + request(#"{"maxResults":1}"#, extra: "Connection: close\r\n") + request("")).utf8)
        let expected: [Parsed] = [
            .request(method: "POST", target: "/", body: Array("{}".utf8), keepAlive: true),
            .request(method: "POST", target: "/", body: Array(#"{"maxResults":1}"#.utf8), keepAlive: false),
            .request(method: "POST", target: "/", body: [], keepAlive: true),
        ]
        for piece in 1...bytes.count {
            #expect(parse(bytes, piece: piece) == expected, "pieces of \(piece)")
        }
    }

    @Test func http10ClosesUnlessAskedToKeepAlive() {
        #expect(parse(Array(request("", version: "HTTP/1.0").utf8), piece: 1000)
                == [.request(method: "POST", target: "/", body: [], keepAlive: false)])
        #expect(parse(Array(request("", extra: "Connection: keep-alive\r\n", version: "HTTP/1.0").utf8), piece: 1000)
                == [.request(method: "POST", target: "/", body: [], keepAlive: true)])
    }

    @Test func expectContinueComesBeforeTheBody() {
        let events = parse(Array(request("{}", extra: "Expect: 100-continue\r\n").utf8), piece: 1000)
        #expect(events == [.expectContinue, .request(method: "POST", target: "/", body: Array("{}".utf8), keepAlive: true)])
    }

    @Test func refusals() {
        #expect(parse(Array("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".utf8), piece: 100) == [.failure(411)])
        #expect(parse(Array("POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n".utf8), piece: 100) == [.failure(400)])
        #expect(parse(Array("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx".utf8), piece: 100) == [.failure(400)])
        #expect(parse(Array("POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n".utf8), piece: 100, maximumBody: 10) == [.failure(413)])
        #expect(parse(Array("POST / HTTP/1.1\r\nX: \(String(repeating: "a", count: 20_000))\r\n\r\n".utf8), piece: 4096) == [.failure(431)])
        #expect(parse(Array("\u{0}\r\n\r\n".utf8), piece: 100) == [.failure(400)])
    }

    @Test func responseHead() {
        let bytes = HTTPRequestParser.response(status: 400, contentType: "application/x-amz-json-1.1", body: Array("{}".utf8),
                                               keepAlive: false, requestId: "rid")
        #expect(String(decoding: bytes, as: UTF8.self) == "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\n"
                + "Content-Length: 2\r\nx-amzn-RequestId: rid\r\nConnection: close\r\n\r\n{}")
    }
}

@Suite("Command line")
struct ServiceOptionsTests {
    private func options(_ arguments: [String]) -> ServiceOptions? {
        if case .run(let o)? = try? ServiceOptionParser.parse(arguments) { return o }
        return nil
    }

    private func refused(_ arguments: [String]) -> Bool {
        (try? ServiceOptionParser.parse(arguments)) == nil
    }

    @Test func defaultsAreLoopbackAndSafe() {
        let o = options([])!
        #expect(o.host == "127.0.0.1" && o.dataPort == 0 && o.apiPort == 0)
        #expect(o.stateDirectory == ".tunnel-service" && o.stateFile == nil && o.certificateFile == nil)
        #expect(o.framing == .passthrough && o.onReconnect == .streamReset && o.region == "us-east-1")
        #expect(o.requiredAccessKeyId == nil && o.verbosity == 4 && o.minuteMilliseconds == 60_000)
    }

    @Test func mqttBroker() throws {
        let o = try #require(options(["--mqtt-broker", "127.0.0.1:18883", "--mqtt-ca", "ca.pem", "--mqtt-cert", "c.pem", "--mqtt-key", "k.pem"]))
        #expect(o.mqttBrokerHost == "127.0.0.1" && o.mqttBrokerPort == 18883)
        #expect(o.mqttCAFile == "ca.pem" && o.mqttCertificateFile == "c.pem" && o.mqttKeyFile == "k.pem")
        #expect(options(["--mqtt-broker", "[::1]:8883", "--mqtt-ca", "ca.pem"])?.mqttBrokerHost == "::1")
        #expect(options([])?.mqttBrokerHost == nil)
        #expect(refused(["--mqtt-broker", "broker", "--mqtt-ca", "ca.pem"]), "no port")
        #expect(refused(["--mqtt-broker", "broker:0", "--mqtt-ca", "ca.pem"]))
        #expect(refused(["--mqtt-broker", ":8883", "--mqtt-ca", "ca.pem"]))
        #expect(refused(["--mqtt-broker", "broker:8883"]), "TLS needs the broker's CA")
        #expect(refused(["--mqtt-broker", "broker:8883", "--mqtt-ca", "ca.pem", "--mqtt-cert", "c.pem"]), "cert without key")
        #expect(refused(["--mqtt-ca", "ca.pem"]), "no broker")
    }

    @Test func everyOption() {
        let o = options(["--state-dir", "/s", "--host", "::1", "--data-port", "8443", "--api-port=8080", "--cert", "c.pem",
                         "--key", "k.pem", "--ca", "ca.pem", "--region", "eu-west-1", "--framing", "split", "--seed", "42",
                         "--on-reconnect", "session-reset", "--state-file", "/s/state.json", "--require-access-key-id", "AKID",
                         "--max-open-tunnels", "5", "--max-connections", "16", "--minute-ms", "100", "-v", "6"])!
        #expect(o.stateDirectory == "/s" && o.host == "::1" && o.dataPort == 8443 && o.apiPort == 8080)
        #expect(o.certificateFile == "c.pem" && o.keyFile == "k.pem" && o.caFile == "ca.pem" && o.region == "eu-west-1")
        #expect(o.framing == .split(seed: 42) && o.onReconnect == .sessionReset && o.stateFile == "/s/state.json")
        #expect(o.requiredAccessKeyId == "AKID" && o.maximumOpenTunnels == 5 && o.maximumConnections == 16)
        #expect(o.minuteMilliseconds == 100 && o.verbosity == 6)
        #expect(options(["--framing", "coalesce", "--on-reconnect", "none"])?.framing == .coalesce)
        #expect((try? ServiceOptionParser.parse(["--help"])) == .help)
    }

    @Test func refusals() {
        #expect(refused(["--bogus"]))
        #expect(refused(["--data-port"]))
        #expect(refused(["--data-port", "65536"]))
        #expect(refused(["--framing", "shuffle"]))
        #expect(refused(["--on-reconnect", "restart"]))
        #expect(refused(["--cert", "c.pem"]))
        #expect(refused(["--ca", "ca.pem"]))
        #expect(refused(["--region", "US East"]))
        #expect(refused(["-v", "7"]))
        #expect(refused(["--seed", "-1"]))
        #expect(refused(["--require-access-key-id", ""]))
    }
}
