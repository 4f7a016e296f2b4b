/// Fuzz target `upgrade-response`: the client's reading of the service's answer to the WebSocket
/// upgrade (WebSocketUpgradeResponseReader in Sources/TunnelCore/WebSocketUpgrade.swift, over
/// HTTPHeadReader in HTTPHead.swift), as bytes arrive from the TLS connection.
///
/// Properties checked:
/// - the reader only consumes a prefix of each piece, and asks for more only once a piece is used
///   up; after a 101 it stops exactly at the end of the head;
/// - the same outcome (or error), after the same number of bytes, whether the response arrives
///   whole, byte by byte, or in mixed pieces; the end-of-stream answer (`finish`) likewise;
/// - an accepted subprotocol is one that was offered; a rejection's status has three digits;
/// - a head that parses, written out again, parses to the same start line and fields;
/// - a 101 written with the input's header fields added (those of the handshake left out) is
///   accepted, and the channel id is the input's; an error response written from a rejection
///   reads back as the same rejection.
@testable import TunnelCore

let clientRequest = WebSocketUpgradeRequest(
    host: "example.com", mode: .destination, accessToken: "token", clientToken: nil,
    protocols: TunnelSubprotocol.all, keyBytes: Array("the sample nonce".utf8))

enum ResponseResult: Equatable {
    case outcome(WebSocketUpgradeOutcome, consumed: Int)
    case error(WebSocketUpgradeError, consumed: Int)
    /// The input ended first; what `finish()` said.
    case ended(WebSocketUpgradeOutcome?, WebSocketUpgradeError?)
}

func readResponse(_ bytes: [UInt8], plan: [Int], reader start: WebSocketUpgradeResponseReader = WebSocketUpgradeResponseReader(request: clientRequest)) -> ResponseResult {
    var reader = start
    var consumed = 0
    var result: ResponseResult? = nil
    forEachPiece(bytes, plan) { piece in
        var input = UnsafeRawBufferPointer(piece)
        let before = input
        do throws(WebSocketUpgradeError) {
            let outcome = try reader.read(&input)
            consumed += consumedPrefix(before, input)
            guard let outcome else {
                require(input.isEmpty, "the reader asked for more with \(input.count) bytes left")
                return true
            }
            result = .outcome(outcome, consumed: consumed)
        } catch {
            consumed += consumedPrefix(before, input)
            _ = error.description
            result = .error(error, consumed: consumed)
        }
        return false
    }
    if let result { return result }
    do throws(WebSocketUpgradeError) {
        return .ended(try reader.finish(), nil)
    } catch {
        return .ended(nil, error)
    }
}

func parseHead(_ bytes: [UInt8], limit: Int) -> HTTPHead? {
    var reader = HTTPHeadReader(limit: limit)
    return bytes.withUnsafeBytes { raw -> HTTPHead? in
        var input = raw
        return try? reader.read(&input)
    }
}

func serialize(_ head: HTTPHead) -> [UInt8] {
    let (a, b, c) = head.startLine
    var text = "\(a) \(b) \(c)\r\n"
    for field in head.headers.fields { text += "\(field.name): \(field.value)\r\n" }
    return Array((text + "\r\n").utf8)
}

func sameHead(_ x: HTTPHead, _ y: HTTPHead) -> Bool {
    x.startLine == y.startLine && x.headers.fields == y.headers.fields
}

/// Header names the 101 check reads or that frame a body; the rest may be anything.
let handshakeNames = ["upgrade", "connection", "sec-websocket-accept", "sec-websocket-protocol",
                      "sec-websocket-extensions", "content-length", "transfer-encoding"]

func checkRoundTrips(_ bytes: [UInt8], whole: ResponseResult) {
    guard let head = parseHead(bytes, limit: WebSocketUpgradeResponseReader.defaultHeadLimit) else { return }
    let written = serialize(head)
    // Written out, a head may grow (": " after each name, U+FFFD for each invalid byte).
    guard let again = parseHead(written, limit: 4 * written.count + 64) else {
        require(false, "a parsed head, written out again, does not parse")
        return
    }
    require(sameHead(head, again), "a parsed head, written out again, parses differently")

    let roomy = WebSocketUpgradeResponseReader(request: clientRequest, headLimit: 1 << 20, maximumBodyKept: 1 << 20)
    let extras = head.headers.fields.filter { field in
        !handshakeNames.contains { HTTPHeaders.name(field.name, equals: $0) }
    }
    let switching = WebSocketUpgradeResponse.switching(key: clientRequest.key, subprotocol: TunnelSubprotocol.v2,
                                                       extraHeaders: extras)
    let channelId = HTTPHeaders(extras).first("channel-id")
    let accepted = readResponse(switching, plan: [switching.count], reader: roomy)
    require(accepted == .outcome(.accepted(subprotocol: TunnelSubprotocol.v2, channelId: channelId), consumed: switching.count),
            "a 101 with the input's other header fields is not accepted: \(accepted)")

    guard case .outcome(.rejected(let status, let reason, let body, let channel), _) = whole, status >= 100 else { return }
    let error = WebSocketUpgradeResponse.error(status: status, reason: reason, body: body,
                                               extraHeaders: channel.map { [HTTPHeader("channel-id", $0)] } ?? [])
    let reread = readResponse(error, plan: [error.count], reader: roomy)
    require(reread == .outcome(.rejected(status: status, reason: reason, body: body, channelId: channel), consumed: error.count),
            "an error response written from a rejection reads back differently: \(reread)")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = inputBytes(data, size)
    let plans = splitPlans(count: bytes.count, seed: fnv1a(bytes))
    let whole = readResponse(bytes, plan: plans[0])
    for plan in plans.dropFirst() {
        let other = readResponse(bytes, plan: plan)
        require(other == whole, "the response reader depends on how the input is split: \(whole) whole, \(other) in \(plan.count) pieces")
    }
    switch whole {
    case .outcome(.accepted(let subprotocol, _), let consumed):
        require(clientRequest.protocols.contains(subprotocol), "subprotocol \(subprotocol) was not offered")
        let head = parseHead(bytes, limit: WebSocketUpgradeResponseReader.defaultHeadLimit)
        require(head != nil, "a 101 was accepted but its head does not parse alone")
        require(consumed >= 4 && bytes[(consumed - 4)..<consumed].elementsEqual([0x0D, 0x0A, 0x0D, 0x0A]),
                "after a 101 the reader did not stop at the end of the head")
    case .outcome(.rejected(let status, _, let body, _), _), .ended(.rejected(let status, _, let body, _)?, nil):
        require(status >= 0 && status <= 999, "status \(status) does not have three digits")
        require(body.unicodeScalars.count <= WebSocketUpgradeResponseReader.defaultBodyKept,
                "more than \(WebSocketUpgradeResponseReader.defaultBodyKept) body bytes were kept")
    case .ended(.accepted?, _):
        require(false, "finish() accepted an upgrade")
    default:
        break
    }
    checkRoundTrips(bytes, whole: whole)
    return 0
}
