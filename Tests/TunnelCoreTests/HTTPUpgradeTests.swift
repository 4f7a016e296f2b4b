// Byte-level tests of the WebSocket opening handshake (RFC 6455 §4, docs/PROTOCOL.md §3): the hash
// and base64 primitives, the client's request bytes, the client's incremental reading of the
// service's answer (cut in every way), and the server side used by the emulator. Helpers in this
// file are private so that they cannot clash with other test files.
import Testing
import TunnelCore

// MARK: Fixed values

/// RFC 6455 §1.3: the key is base64 of the 16 bytes "the sample nonce".
private let rfcKeyBytes: [UInt8] = Array("the sample nonce".utf8)
private let rfcKey = "dGhlIHNhbXBsZSBub25jZQ=="
private let rfcAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

private let host = "data.tunneling.iot.us-east-1.amazonaws.com"
private let accessToken = "AQGAAXiXcGFydCBvZiBhIGZha2UgdG9rZW4-"
private let clientToken = "c0ffee00-1111-2222-3333-444455556666"
private let channelId = "0ea2b3fffe6adc0e-0000125a-00005adb-c2f218c35b921565-17c807e1"
private let usedTokenBody = "Invalid access token: The access token was previously used and can not be used again."

private func utf8(_ s: String) -> [UInt8] { Array(s.utf8) }

/// The request a destination sends with the RFC key and offering versions 3 and 2, written out
/// by hand so that the encoder is compared against text rather than against itself.
private func expectedRequest(token: String = accessToken, clientToken: String? = clientToken,
                             userAgent: String? = nil) -> String {
    var text = "GET /tunnel?local-proxy-mode=destination HTTP/1.1\r\n"
        + "Host: data.tunneling.iot.us-east-1.amazonaws.com\r\n"
        + "Upgrade: websocket\r\n"
        + "Connection: Upgrade\r\n"
        + "Sec-WebSocket-Version: 13\r\n"
        + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0, aws.iot.securetunneling-2.0\r\n"
        + "access-token: \(token)\r\n"
    if let c = clientToken { text += "client-token: \(c)\r\n" }
    if let a = userAgent { text += "User-Agent: \(a)\r\n" }
    return text + "\r\n"
}

private func request(token: String = accessToken, clientToken: String? = clientToken,
                     protocols: [String] = [TunnelSubprotocol.v3, TunnelSubprotocol.v2],
                     keyBytes: [UInt8] = rfcKeyBytes, userAgent: String? = nil) -> WebSocketUpgradeRequest {
    WebSocketUpgradeRequest(host: host, mode: .destination, accessToken: token, clientToken: clientToken,
                            protocols: protocols, keyBytes: keyBytes, userAgent: userAgent)
}

/// The service's 101 for `request()`, as seen in the field, followed by the first WebSocket frame.
private let validSwitching = "HTTP/1.1 101 Switching Protocols\r\n"
    + "upgrade: websocket\r\n"
    + "connection: upgrade\r\n"
    + "sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    + "sec-websocket-protocol: aws.iot.securetunneling-3.0\r\n"
    + "channel-id: 0ea2b3fffe6adc0e-0000125a-00005adb-c2f218c35b921565-17c807e1\r\n"
    + "\r\n"
private let firstFrame = bytes("82 02 08 05")

// MARK: Driving the response reader

/// How reading a response ended.
private enum ReadEnd: Equatable {
    /// An outcome, and the input bytes after it that the reader left for the WebSocket.
    case outcome(WebSocketUpgradeOutcome, leftover: [UInt8])
    case error(WebSocketUpgradeError)
    /// All input consumed and no outcome yet.
    case needMore
    /// `read` returned nil without consuming all of its input, which would stall a read loop.
    case stalled(bytesLeft: Int)
}

/// Feeds `pieces` to a fresh reader, one `read` per piece, as the proxy does with each TCP read.
/// With `finishAtEnd` the stream then ends (the peer closed) and `finish()` gives the result.
private func readResponse(
    _ pieces: [[UInt8]], request: WebSocketUpgradeRequest = request(),
    headLimit: Int = WebSocketUpgradeResponseReader.defaultHeadLimit,
    maximumBodyKept: Int = WebSocketUpgradeResponseReader.defaultBodyKept,
    finishAtEnd: Bool = false
) -> ReadEnd {
    var reader = WebSocketUpgradeResponseReader(request: request, headLimit: headLimit, maximumBodyKept: maximumBodyKept)
    var outcome: WebSocketUpgradeOutcome? = nil
    var leftover: [UInt8] = []
    for piece in pieces {
        if outcome != nil {
            leftover += piece
            continue
        }
        var end: ReadEnd? = nil
        piece.withUnsafeBytes { raw in
            var input = raw
            do throws(WebSocketUpgradeError) {
                outcome = try reader.read(&input)
                if outcome != nil {
                    leftover += Array(input)
                } else if !input.isEmpty {
                    end = .stalled(bytesLeft: input.count)
                }
            } catch {
                end = .error(error)
            }
        }
        if let end { return end }
    }
    if let outcome { return .outcome(outcome, leftover: leftover) }
    guard finishAtEnd else { return .needMore }
    do throws(WebSocketUpgradeError) {
        return .outcome(try reader.finish(), leftover: [])
    } catch {
        return .error(error)
    }
}

/// Reads `stream` cut at every split `splits(of:)` lists, expecting the same end every time.
/// Returns the cuts that gave a different end, for one readable failure message.
private func mismatchedSplits(
    _ stream: [UInt8], expected: ReadEnd, pairLimit: Int = 64, finishAtEnd: Bool = false,
    maximumBodyKept: Int = WebSocketUpgradeResponseReader.defaultBodyKept
) -> [String] {
    var bad: [String] = []
    for lengths in splits(of: stream.count, pairLimit: pairLimit) {
        let end = readResponse(cut(stream, lengths), maximumBodyKept: maximumBodyKept, finishAtEnd: finishAtEnd)
        if end != expected { bad.append("\(lengths) -> \(end)") }
        if bad.count > 5 { break }
    }
    return bad
}

private func oneByteAtATime(_ stream: [UInt8]) -> [[UInt8]] { stream.map { [$0] } }

// MARK: Driving the server side

/// What the emulator's side made of a request.
private enum ServerRead {
    case request(WebSocketUpgradeRequestHead)
    case head(HTTPHeadError)
    case upgrade(WebSocketUpgradeError)
    case incomplete
}

private func readRequest(_ stream: [UInt8], limit: Int = 4096) -> ServerRead {
    var reader = HTTPHeadReader(limit: limit)
    return stream.withUnsafeBytes { raw in
        var input = raw
        let head: HTTPHead
        do throws(HTTPHeadError) {
            guard let complete = try reader.read(&input) else { return .incomplete }
            head = complete
        } catch {
            return .head(error)
        }
        do throws(WebSocketUpgradeError) {
            return .request(try WebSocketUpgradeRequestHead(head))
        } catch {
            return .upgrade(error)
        }
    }
}

// MARK: Table of invalid 101 responses

struct HTTPUpgradeSwitchingCase: Sendable, CustomTestStringConvertible {
    var name: String
    var response: String
    /// Words the `invalidSwitchingResponse` problem must contain.
    var mentions: [String]
    var testDescription: String { name }
}

private func switching(_ lines: [String]) -> String {
    "HTTP/1.1 101 Switching Protocols\r\n" + lines.map { $0 + "\r\n" }.joined() + "\r\n"
}

private let switchingCases: [HTTPUpgradeSwitchingCase] = [
    HTTPUpgradeSwitchingCase(
        name: "wrong accept key",
        response: switching(["Upgrade: websocket", "Connection: Upgrade",
                             "Sec-WebSocket-Accept: dGhlIHNhbXBsZSBub25jZQ==",
                             "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0"]),
        mentions: ["'dGhlIHNhbXBsZSBub25jZQ=='", "'s3pPLMBiTxaQ9kYGzzhZRbK+xOo='"]),
    HTTPUpgradeSwitchingCase(
        name: "missing accept key",
        response: switching(["Upgrade: websocket", "Connection: Upgrade",
                             "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0"]),
        mentions: ["Sec-WebSocket-Accept", "missing"]),
    HTTPUpgradeSwitchingCase(
        name: "missing subprotocol",
        response: switching(["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Accept: \(rfcAccept)"]),
        mentions: ["no Sec-WebSocket-Protocol"]),
    HTTPUpgradeSwitchingCase(
        name: "subprotocol that was not offered",
        response: switching(["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Accept: \(rfcAccept)",
                             "Sec-WebSocket-Protocol: aws.iot.securetunneling-1.0"]),
        mentions: ["'aws.iot.securetunneling-1.0'", "not offered"]),
    HTTPUpgradeSwitchingCase(
        name: "two subprotocol headers",
        response: switching(["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Accept: \(rfcAccept)",
                             "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0",
                             "Sec-WebSocket-Protocol: aws.iot.securetunneling-2.0"]),
        mentions: ["more than one"]),
    HTTPUpgradeSwitchingCase(
        name: "two subprotocols in one header",
        response: switching(["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Accept: \(rfcAccept)",
                             "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0, aws.iot.securetunneling-2.0"]),
        mentions: ["not offered"]),
    HTTPUpgradeSwitchingCase(
        name: "Upgrade header missing",
        response: switching(["Connection: Upgrade", "Sec-WebSocket-Accept: \(rfcAccept)",
                             "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0"]),
        mentions: ["Upgrade header"]),
    HTTPUpgradeSwitchingCase(
        name: "Upgrade names another protocol",
        response: switching(["Upgrade: h2c", "Connection: Upgrade", "Sec-WebSocket-Accept: \(rfcAccept)",
                             "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0"]),
        mentions: ["Upgrade header"]),
    HTTPUpgradeSwitchingCase(
        name: "Connection without upgrade",
        response: switching(["Upgrade: websocket", "Connection: keep-alive", "Sec-WebSocket-Accept: \(rfcAccept)",
                             "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0"]),
        mentions: ["Connection header"]),
    HTTPUpgradeSwitchingCase(
        name: "extensions present",
        response: switching(["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Accept: \(rfcAccept)",
                             "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0",
                             "Sec-WebSocket-Extensions: permessage-deflate"]),
        mentions: ["'permessage-deflate'"]),
]

// MARK: Tests

@Suite("WebSocket opening handshake")
struct HTTPUpgradeTests {

    // MARK: Primitives

    @Test("RFC 6455 §1.3 accept value")
    func rfcAcceptValue() {
        #expect(HandshakeCrypto.base64Encode(rfcKeyBytes) == rfcKey)
        #expect(HandshakeCrypto.webSocketAccept(forKey: rfcKey) == rfcAccept)
        #expect(HandshakeCrypto.webSocketAccept(forKey: "AAECAwQFBgcICQoLDA0ODw==") == "Bz3qJYTGdOe8gUSpLosEdiLKDrk=")
    }

    @Test("SHA-1 test vectors (FIPS 180 examples)")
    func sha1Vectors() {
        #expect(hex(HandshakeCrypto.sha1(utf8("abc"))) == "a9993e364706816aba3e25717850c26c9cd0d89d")
        #expect(hex(HandshakeCrypto.sha1([])) == "da39a3ee5e6b4b0d3255bfef95601890afd80709")
        #expect(hex(HandshakeCrypto.sha1(utf8("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")))
            == "84983e441c3bd26ebaae4aa1f95129e5e54670f1")
    }

    @Test("base64: RFC 4648 §10 vectors and round trips of lengths 0...20")
    func base64RoundTrips() {
        let vectors = [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="),
                       ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        for (plain, encoded) in vectors {
            #expect(HandshakeCrypto.base64Encode(utf8(plain)) == encoded)
            #expect(HandshakeCrypto.base64Decode(encoded) == utf8(plain))
        }
        // Bytes from the whole 0...255 range, so that '+' and '/' occur in the encodings.
        for length in 0...20 {
            let data = (0..<length).map { UInt8(truncatingIfNeeded: 251 &- $0 &* 37) }
            let encoded = HandshakeCrypto.base64Encode(data)
            #expect(encoded.utf8.count == (length + 2) / 3 * 4, "length \(length)")
            #expect(HandshakeCrypto.base64Decode(encoded) == data, "length \(length): \(encoded)")
        }
        #expect(HandshakeCrypto.base64Encode([0xFB, 0xEF, 0xFF]) == "++//")
    }

    @Test("base64: invalid text decodes to nil",
          arguments: ["Zm9v!", "Zm9v YmFy", "Zg==Zg==", "Z===", "Zm9\u{e9}", "Zm-v", "Zm_v"])
    func base64Invalid(_ text: String) {
        #expect(HandshakeCrypto.base64Decode(text) == nil)
    }

    @Test("base64: text whose length is not a multiple of 4 decodes to nil, not to a shorter value",
          arguments: ["Zm9vYg", "Zm9vYmE", "Zg", "Z", "Zg="])
    func base64Truncated(_ text: String) {
        // `base64Decode` promises nil for anything that is not padded standard base64. Dropping
        // an incomplete last group instead would turn a damaged value into a shorter one that
        // looks valid.
        #expect(HandshakeCrypto.base64Decode(text) == nil)
    }

    // MARK: Client request

    @Test("Request bytes: mode, key, protocols, access token, client token, user agent")
    func requestBytes() throws {
        #expect(try request().encoded() == utf8(expectedRequest()))
        #expect(try request(userAgent: "localproxy-swift linux 64-bit").encoded()
            == utf8(expectedRequest(userAgent: "localproxy-swift linux 64-bit")))
        // Without a client token there is no client-token line at all.
        let withoutClientToken = try request(clientToken: nil).encoded()
        #expect(withoutClientToken == utf8(expectedRequest(clientToken: nil)))
        #expect(!String(decoding: withoutClientToken, as: UTF8.self).contains("client-token"))
    }

    @Test("Request with key bytes 0x00...0x0f, source mode and the default protocol")
    func requestWithCountingKey() throws {
        let r = WebSocketUpgradeRequest(host: "example.com", mode: .source, accessToken: "t", clientToken: nil,
                                        keyBytes: Array(0...15))
        #expect(r.key == "AAECAwQFBgcICQoLDA0ODw==")
        let text = "GET /tunnel?local-proxy-mode=source HTTP/1.1\r\n"
            + "Host: example.com\r\n"
            + "Upgrade: websocket\r\n"
            + "Connection: Upgrade\r\n"
            + "Sec-WebSocket-Version: 13\r\n"
            + "Sec-WebSocket-Key: AAECAwQFBgcICQoLDA0ODw==\r\n"
            + "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0\r\n"
            + "access-token: t\r\n"
            + "\r\n"
        #expect(try r.encoded() == utf8(text))
    }

    @Test("Request refuses values that would break or bloat the header block")
    func requestErrors() {
        #expect(throws: WebSocketUpgradeError.invalidHeaderValue(name: "access-token", problem: "the access token is empty")) {
            try request(token: "").encoded()
        }
        // A CR LF in the token would let it add headers of its own.
        #expect(throws: WebSocketUpgradeError.invalidHeaderValue(name: "access-token", problem: "contains a control character (code 13)")) {
            try request(token: "abc\r\nX-Injected: 1").encoded()
        }
        #expect(throws: WebSocketUpgradeError.invalidHeaderValue(name: "access-token", problem: "contains a control character (code 10)")) {
            try request(token: "abc\nX-Injected: 1").encoded()
        }
        #expect(throws: WebSocketUpgradeError.invalidHeaderValue(name: "access-token", problem: "5000 bytes is longer than the whole request may be")) {
            try request(token: String(repeating: "A", count: 5000)).encoded()
        }
        var badHost = request()
        badHost.host = "example.com\r\nX: y"
        #expect(throws: WebSocketUpgradeError.invalidHeaderValue(name: "Host", problem: "contains a control character (code 13)")) {
            try badHost.encoded()
        }
        #expect(throws: WebSocketUpgradeError.invalidHeaderValue(name: "Sec-WebSocket-Protocol", problem: "contains a control character (code 9)")) {
            try request(protocols: ["a\tb"]).encoded()
        }
    }

    @Test("client-token must be 32 to 128 characters of [A-Za-z0-9-]",
          arguments: [(31, "a", false), (32, "a", true), (128, "Z", true), (129, "Z", false),
                      (40, "_", false), (40, " ", false), (40, "é", false), (40, "-", true), (40, "7", true)])
    func clientTokenRule(_ c: (length: Int, filler: String, valid: Bool)) throws {
        // The filler goes in the middle of otherwise valid characters so that one bad byte decides.
        let token = "ab" + String(repeating: c.filler, count: c.length - 4) + "cd"
        #expect(isValidClientToken(token) == c.valid)
        if c.valid {
            #expect(try request(clientToken: token).encoded() == utf8(expectedRequest(clientToken: token)))
        } else {
            #expect(throws: WebSocketUpgradeError.invalidHeaderValue(
                name: "client-token", problem: "must be 32 to 128 characters of A-Z, a-z, 0-9 and '-'")) {
                try request(clientToken: token).encoded()
            }
        }
    }

    @Test("A request of exactly 4096 bytes is sent; one byte more is refused")
    func requestSizeLimit() throws {
        let overhead = utf8(expectedRequest(token: "", clientToken: nil)).count
        let fitting = String(repeating: "T", count: 4096 - overhead)
        let atLimit = try request(token: fitting, clientToken: nil).encoded()
        #expect(atLimit.count == 4096)
        #expect(atLimit == utf8(expectedRequest(token: fitting, clientToken: nil)))
        #expect(throws: WebSocketUpgradeError.requestTooLarge(4097)) {
            try request(token: fitting + "T", clientToken: nil).encoded()
        }
        #expect(WebSocketUpgradeError.requestTooLarge(4097).description.contains("4097"))
    }

    // MARK: Client reading the 101

    @Test("A valid 101 is accepted and the WebSocket bytes after it stay in the input, for every split")
    func acceptedWithLeftover() {
        let stream = utf8(validSwitching) + firstFrame
        let expected = ReadEnd.outcome(.accepted(subprotocol: TunnelSubprotocol.v3, channelId: channelId), leftover: firstFrame)
        #expect(readResponse([stream]) == expected)
        #expect(mismatchedSplits(stream, expected: expected, pairLimit: 300) == [])
        // Without any bytes after the head nothing is left over.
        #expect(readResponse([utf8(validSwitching)]) == .outcome(
            .accepted(subprotocol: TunnelSubprotocol.v3, channelId: channelId), leftover: []))
        // One byte short of the head's end, the reader waits.
        #expect(readResponse([Array(utf8(validSwitching).dropLast())]) == .needMore)
    }

    @Test("Header names and listed tokens are compared without regard to case")
    func acceptedCaseInsensitive() {
        let response = "HTTP/1.1 101 Switching Protocols\r\n"
            + "UPGRADE: WebSocket\r\n"
            + "CONNECTION: keep-alive, UPGRADE\r\n"
            + "SEC-WEBSOCKET-ACCEPT: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            + "Sec-Websocket-Protocol:aws.iot.securetunneling-2.0 \r\n"
            + "\r\n"
        #expect(readResponse([utf8(response)]) == .outcome(
            .accepted(subprotocol: TunnelSubprotocol.v2, channelId: nil), leftover: []))
    }

    @Test("Invalid 101 responses are refused", arguments: switchingCases)
    func invalidSwitching(_ c: HTTPUpgradeSwitchingCase) throws {
        let stream = utf8(c.response) + firstFrame
        let end = readResponse([stream])
        guard case .error(.invalidSwitchingResponse(let problem)) = end else {
            Issue.record("expected invalidSwitchingResponse, got \(end)")
            return
        }
        for word in c.mentions { #expect(problem.contains(word), "\(problem)") }
        #expect(readResponse(oneByteAtATime(stream)) == end)
    }

    @Test("Malformed status lines are refused",
          arguments: ["HTTP/1.1 1o1 Switching Protocols", "HTTP/2 101 Switching Protocols",
                      "ICY 101 Switching Protocols", "HTTP/1.1 1010 Switching Protocols", "HTTP/1.1 -01 X"])
    func malformedStatusLine(_ line: String) {
        let stream = utf8(line + "\r\nUpgrade: websocket\r\n\r\n")
        #expect(readResponse([stream]) == .error(.malformedStatusLine(line)))
        #expect(readResponse(oneByteAtATime(stream)) == .error(.malformedStatusLine(line)))
    }

    @Test("A start line of one word or an empty one is a malformed head")
    func startLineWithoutParts() {
        #expect(readResponse([utf8("HTTP/1.1\r\n\r\n")]) == .error(.head(
            .malformedLine(offset: 0, what: "start line needs three space-separated parts"))))
        #expect(readResponse([utf8("\r\n\r\n")]) == .error(.head(.malformedLine(offset: 0, what: "empty start line"))))
    }

    @Test("A head of exactly headLimit bytes is read; one byte longer is refused")
    func headLimit() {
        let head = utf8(validSwitching)
        let accepted = ReadEnd.outcome(.accepted(subprotocol: TunnelSubprotocol.v3, channelId: channelId), leftover: [])
        #expect(readResponse([head], headLimit: head.count) == accepted)
        #expect(readResponse([head], headLimit: head.count - 1) == .error(.head(.tooLarge(limit: head.count - 1))))
        // Without an end the reader gives up at the limit rather than buffering on.
        let endless = utf8("HTTP/1.1 101 Switching Protocols\r\nX-Filler: " + String(repeating: "x", count: 200))
        #expect(readResponse([endless], headLimit: 100) == .error(.head(.tooLarge(limit: 100))))
        #expect(readResponse(oneByteAtATime(endless), headLimit: 100) == .error(.head(.tooLarge(limit: 100))))
    }

    @Test("A bare LF inside an otherwise CRLF head is refused at its offset")
    func bareLineFeedInside() {
        let response = "HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        let expected = ReadEnd.error(.head(.malformedLine(offset: 32, what: "line feed without carriage return")))
        #expect(readResponse([utf8(response)]) == expected)
        let bareCR = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: web\rsocket\r\n\r\n"
        #expect(readResponse([utf8(bareCR)]) == .error(.head(
            .malformedLine(offset: 46, what: "carriage return without line feed"))))
    }

    @Test("A head with only bare LF line endings is refused, not waited on")
    func bareLineFeedsOnly() {
        // The whole response the peer will send: every line ends in LF alone. The reader cannot
        // find a CRLF CRLF in it, but the first bare LF already makes it invalid, so waiting for
        // more bytes (until the 8 KiB head limit) would only stall the handshake.
        let response = utf8(validSwitching.replacing("\r\n", with: "\n")) + firstFrame
        let expected = ReadEnd.error(.head(.malformedLine(offset: 32, what: "line feed without carriage return")))
        #expect(readResponse([response]) == expected)
        #expect(readResponse(oneByteAtATime(response)) == expected)
    }

    @Test("An obs-fold continuation line is refused at its offset")
    func obsFold() {
        let before = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection:\r\n"
        let response = before + " Upgrade\r\n\r\n"
        let expected = ReadEnd.error(.head(.malformedLine(
            offset: utf8(before).count, what: "folded header line (obsolete line folding is not accepted)")))
        #expect(readResponse([utf8(response)]) == expected)
        let tabbed = before + "\tUpgrade\r\n\r\n"
        #expect(readResponse([utf8(tabbed)]) == expected)
    }

    @Test("A header name with a space before the colon is refused")
    func spaceBeforeColon() {
        let before = "HTTP/1.1 101 Switching Protocols\r\n"
        let response = before + "Upgrade : websocket\r\n\r\n"
        #expect(readResponse([utf8(response)]) == .error(.head(.malformedLine(
            offset: utf8(before).count + 7, what: "invalid character in header name"))))
    }

    // MARK: Client reading a rejection

    @Test("400 with a Content-Length body: status, reason, body and channel-id, for every split")
    func rejectedWithContentLength() {
        let head = "HTTP/1.1 400 Bad Request\r\n"
            + "Content-Type: text/plain\r\n"
            + "Content-Length: 85\r\n"
            + "channel-id: \(channelId)\r\n"
            + "\r\n"
        // Bytes after the body are not part of the response and stay in the input.
        let stream = utf8(head + usedTokenBody) + utf8("XYZ")
        let expected = ReadEnd.outcome(
            .rejected(status: 400, reason: "Bad Request", body: usedTokenBody, channelId: channelId), leftover: utf8("XYZ"))
        #expect(readResponse([stream]) == expected)
        #expect(mismatchedSplits(stream, expected: expected) == [])
        // Cut short, the body waits for the rest; `finish()` then reports what arrived.
        let short = Array(utf8(head + usedTokenBody).dropLast(10))
        #expect(readResponse([short]) == .needMore)
        #expect(readResponse([short], finishAtEnd: true) == .outcome(
            .rejected(status: 400, reason: "Bad Request", body: String(usedTokenBody.dropLast(10)), channelId: channelId),
            leftover: []))
    }

    @Test("A zero Content-Length ends the response at the head")
    func rejectedEmptyBody() {
        let stream = utf8("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n") + firstFrame
        #expect(readResponse([stream]) == .outcome(
            .rejected(status: 503, reason: "Service Unavailable", body: "", channelId: nil), leftover: firstFrame))
    }

    @Test("A chunked body with an extension, an uppercase size and a trailer, for every split")
    func rejectedChunked() {
        let stream = utf8("HTTP/1.1 410 Gone\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "7;note=\"first\"\r\nTunnel \r\n"
            + "A\r\nis closed.\r\n"
            + "0\r\n"
            + "X-Trailer: yes\r\n"
            + "\r\n") + utf8("XYZ")
        let expected = ReadEnd.outcome(
            .rejected(status: 410, reason: "Gone", body: "Tunnel is closed.", channelId: nil), leftover: utf8("XYZ"))
        #expect(readResponse([stream]) == expected)
        #expect(mismatchedSplits(stream, expected: expected) == [])
    }

    @Test("A body without a length ends with the stream: finish() returns it")
    func rejectedUntilClose() {
        let stream = utf8("HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\r\nsomething broke")
        #expect(readResponse([stream]) == .needMore)
        let expected = ReadEnd.outcome(
            .rejected(status: 500, reason: "Internal Server Error", body: "something broke", channelId: nil), leftover: [])
        #expect(mismatchedSplits(stream, expected: expected, finishAtEnd: true) == [])
    }

    @Test("Only maximumBodyKept bytes of a body are kept, whatever its framing")
    func bodyTruncated() {
        let alphabet = "abcdefghijklmnopqrstuvwxyz"
        let byLength = utf8("HTTP/1.1 401 Unauthorized\r\nContent-Length: 26\r\n\r\n\(alphabet)") + firstFrame
        let kept = ReadEnd.outcome(.rejected(status: 401, reason: "Unauthorized", body: "abcdefghij", channelId: nil),
                                   leftover: firstFrame)
        // The whole body is still consumed: the frame after it is what is left over.
        #expect(readResponse([byLength], maximumBodyKept: 10) == kept)
        #expect(mismatchedSplits(byLength, expected: kept, maximumBodyKept: 10) == [])

        let chunked = utf8("HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nabcdefgh\r\n12\r\nijklmnopqrstuvwxyz\r\n0\r\n\r\n")
            + firstFrame
        #expect(readResponse([chunked], maximumBodyKept: 10) == kept)

        let untilClose = utf8("HTTP/1.1 401 Unauthorized\r\n\r\n\(alphabet)")
        #expect(readResponse([untilClose], maximumBodyKept: 10, finishAtEnd: true) == .outcome(
            .rejected(status: 401, reason: "Unauthorized", body: "abcdefghij", channelId: nil), leftover: []))
        #expect(WebSocketUpgradeResponseReader.defaultBodyKept == 2048)
    }

    @Test("A malformed chunk size is an error", arguments: ["zz\r\n", "5 \r\n", "\r\n", "123456789\r\n"])
    func malformedChunkSize(_ sizeLine: String) {
        // A broken body must surface as `malformedBody`, not as a normal rejection carrying
        // whatever part of the body came before the damage.
        let stream = utf8("HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n" + sizeLine + "abc\r\n0\r\n\r\n")
        let end = readResponse([stream])
        guard case .error(.malformedBody(let problem)) = end else {
            Issue.record("expected malformedBody, got \(end)")
            return
        }
        #expect(problem.contains("chunk size"), "\(problem)")
    }

    @Test("Chunk data not followed by CRLF is an error")
    func chunkDataWithoutCRLF() {
        let stream = utf8("HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n")
        #expect(readResponse([stream]) == .error(.malformedBody("chunk data not followed by CRLF")))
    }

    @Test("A Content-Length that is not a number is an error")
    func badContentLength() {
        let stream = utf8("HTTP/1.1 400 Bad Request\r\nContent-Length: 12x\r\n\r\nbody")
        #expect(readResponse([stream]) == .error(.malformedBody("Content-Length '12x' is not a number")))
    }

    @Test("finish() before a complete head is an error")
    func finishWithoutHead() {
        let expected = ReadEnd.error(.malformedStatusLine("connection closed before a complete response head arrived"))
        #expect(readResponse([], finishAtEnd: true) == expected)
        #expect(readResponse([utf8("HTTP/1.1 400 Bad Request\r\nContent-Le")], finishAtEnd: true) == expected)
    }

    // MARK: Server side

    @Test("The server side parses the request our encoder produces")
    func serverParsesOurRequest() throws {
        let encoded = try request().encoded()
        #expect(encoded == utf8(expectedRequest()))
        guard case .request(let head) = readRequest(encoded) else {
            Issue.record("request not accepted: \(readRequest(encoded))")
            return
        }
        #expect(head.method == "GET")
        #expect(head.target == "/tunnel?local-proxy-mode=destination")
        #expect(head.path == "/tunnel")
        #expect(head.queryValues("local-proxy-mode") == ["destination"])
        #expect(head.queryValues("other") == [])
        #expect(head.key == rfcKey)
        #expect(head.protocols == [TunnelSubprotocol.v3, TunnelSubprotocol.v2])
        #expect(head.headers.values("access-token") == [accessToken])
        #expect(head.headers.values("CLIENT-TOKEN") == [clientToken])
        #expect(head.headers.first("host") == host)
        #expect(head.headers.fields.count == 8)
    }

    @Test("The server side joins protocols from several headers and reads repeated query values")
    func serverProtocolsAndQuery() {
        let text = "GET /tunnel?local-proxy-mode=source&x=1&local-proxy-mode=&flag HTTP/1.1\r\n"
            + "Host: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            + "Sec-WebSocket-Key: \(rfcKey)\r\n"
            + "Sec-WebSocket-Protocol: a ,b,, c\r\nSec-WebSocket-Protocol: d\r\n\r\n"
        guard case .request(let head) = readRequest(utf8(text)) else {
            Issue.record("request not accepted: \(readRequest(utf8(text)))")
            return
        }
        #expect(head.protocols == ["a", "b", "c", "d"])
        #expect(head.queryValues("local-proxy-mode") == ["source", ""])
        #expect(head.queryValues("flag") == [""])
        #expect(head.queryValues("x") == ["1"])
    }

    @Test("The server side answers invalid upgrade requests with the right status",
          arguments: [
            ("GET /tunnel", "POST /tunnel", 405, "POST"),
            ("HTTP/1.1\r\n", "HTTP/1.0\r\n", 400, "HTTP/1.0"),
            ("Upgrade: websocket\r\n", "", 400, "Upgrade"),
            ("Upgrade: websocket\r\n", "Upgrade: h2c\r\n", 400, "Upgrade"),
            ("Connection: Upgrade\r\n", "Connection: keep-alive\r\n", 400, "Connection"),
            ("Sec-WebSocket-Version: 13\r\n", "Sec-WebSocket-Version: 12\r\n", 426, "13"),
            ("Sec-WebSocket-Version: 13\r\n", "", 426, "13"),
            ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j\r\n", 400, "16 bytes"),
            ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==ZQ==\r\n", 400, "16 bytes"),
            ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "Sec-WebSocket-Key: not base64 at all!\r\n", 400, "16 bytes"),
            ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "", 400, "Sec-WebSocket-Key"),
            ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: AAECAwQFBgcICQoLDA0ODw==\r\n", 400, "one"),
          ])
    func serverRefuses(_ c: (replace: String, with: String, status: Int, mention: String)) {
        let text = expectedRequest()
        #expect(text.contains(c.replace))
        let changed = utf8(text.replacing(c.replace, with: c.with))
        guard case .upgrade(.invalidUpgradeRequest(let status, let problem)) = readRequest(changed) else {
            Issue.record("expected invalidUpgradeRequest, got \(readRequest(changed))")
            return
        }
        #expect(status == c.status)
        #expect(problem.contains(c.mention), "\(problem)")
    }

    @Test("The server side reads a 4096-byte request and refuses a longer one at 4096 bytes")
    func serverRequestLimit() {
        let overhead = utf8(expectedRequest(token: "", clientToken: nil)).count
        let fitting = expectedRequest(token: String(repeating: "T", count: 4096 - overhead), clientToken: nil)
        #expect(utf8(fitting).count == 4096)
        guard case .request = readRequest(utf8(fitting)) else {
            Issue.record("4096-byte request not accepted: \(readRequest(utf8(fitting)))")
            return
        }
        let over = utf8(expectedRequest(token: String(repeating: "T", count: 4097 - overhead), clientToken: nil))
        guard case .head(.tooLarge(limit: 4096)) = readRequest(over) else {
            Issue.record("expected tooLarge(4096), got \(readRequest(over))")
            return
        }
        // The reader stops after 4096 bytes: the rest of the input is left unread.
        var reader = HTTPHeadReader(limit: 4096)
        let left = over.withUnsafeBytes { raw -> Int in
            var input = raw
            do throws(HTTPHeadError) { _ = try reader.read(&input) } catch { return input.count }
            return -1
        }
        #expect(left == 1)
    }

    @Test("switching(key:) bytes for the RFC key")
    func switchingBytes() {
        let bytes = WebSocketUpgradeResponse.switching(
            key: rfcKey, subprotocol: TunnelSubprotocol.v3, extraHeaders: [HTTPHeader("channel-id", channelId)])
        let text = "HTTP/1.1 101 Switching Protocols\r\n"
            + "Upgrade: websocket\r\n"
            + "Connection: Upgrade\r\n"
            + "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            + "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0\r\n"
            + "channel-id: 0ea2b3fffe6adc0e-0000125a-00005adb-c2f218c35b921565-17c807e1\r\n"
            + "\r\n"
        #expect(bytes == utf8(text))
    }

    @Test("error(status:) bytes with Content-Length, and its reading by the client")
    func errorBytes() {
        let bytes = WebSocketUpgradeResponse.error(
            status: 400, reason: WebSocketUpgradeResponse.reasonPhrase(400), body: usedTokenBody,
            extraHeaders: [HTTPHeader("channel-id", channelId)])
        let text = "HTTP/1.1 400 Bad Request\r\n"
            + "Content-Type: text/plain; charset=utf-8\r\n"
            + "Content-Length: 85\r\n"
            + "Connection: close\r\n"
            + "channel-id: 0ea2b3fffe6adc0e-0000125a-00005adb-c2f218c35b921565-17c807e1\r\n"
            + "\r\n"
            + usedTokenBody
        #expect(bytes == utf8(text))
        #expect(readResponse([bytes]) == .outcome(
            .rejected(status: 400, reason: "Bad Request", body: usedTokenBody, channelId: channelId), leftover: []))
        // A multi-byte body is counted in bytes, not characters.
        #expect(WebSocketUpgradeResponse.error(status: 404, reason: "Not Found", body: "né")
            == utf8("HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nConnection: close\r\n\r\nné"))
    }

    @Test("Round trip: our request, read by our server side, answered, and read back by our client")
    func roundTrip() throws {
        let client = request(keyBytes: Array(0...15))
        guard case .request(let head) = readRequest(try client.encoded()) else {
            Issue.record("request not accepted")
            return
        }
        #expect(head.key == "AAECAwQFBgcICQoLDA0ODw==")
        let answer = WebSocketUpgradeResponse.switching(
            key: head.key, subprotocol: head.protocols[1], extraHeaders: [HTTPHeader("channel-id", "c-1")])
        #expect(readResponse([answer + firstFrame], request: client) == .outcome(
            .accepted(subprotocol: TunnelSubprotocol.v2, channelId: "c-1"), leftover: firstFrame))
        // The answer to a different key does not pass the client's check.
        let wrong = WebSocketUpgradeResponse.switching(key: rfcKey, subprotocol: TunnelSubprotocol.v3)
        #expect(readResponse([wrong], request: client) == .error(.invalidSwitchingResponse(
            "Sec-WebSocket-Accept is '\(rfcAccept)', expected 'Bz3qJYTGdOe8gUSpLosEdiLKDrk='")))
    }
}
