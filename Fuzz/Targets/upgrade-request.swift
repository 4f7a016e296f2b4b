/// Fuzz target `upgrade-request`: the emulator's reading of a client's WebSocket upgrade request,
/// as its data plane does it: HTTPHeadReader (Sources/TunnelCore/HTTPHead.swift) fed as bytes
/// arrive, then WebSocketUpgradeRequestHead (WebSocketUpgrade.swift) and the tunnel admission
/// rules (Admission in Sources/TunnelService/Admission.swift).
///
/// Properties checked:
/// - the head reader only consumes a prefix of each piece, stops right after the blank line, never
///   holds more than the 4 KB limit, and gives the same head or error however the input is split;
/// - an admitted request has a 16-byte key, offered the subprotocol chosen, and carries one
///   non-empty access token and a valid client token, if any; a refusal has an HTTP error status;
/// - the emulator's 101 for an admitted request is accepted by the proxy's response reader, with
///   the subprotocol the emulator chose;
/// - a request the proxy writes from what was admitted (`WebSocketUpgradeRequest.encoded`) is
///   admitted again with the same mode, tokens and subprotocol.
@testable import TunnelCore
@testable import TunnelService

enum HeadResult {
    case head(HTTPHead, consumed: Int)
    case error(HTTPHeadError, consumed: Int)
    case incomplete
}

func sameResult(_ a: HeadResult, _ b: HeadResult) -> Bool {
    switch (a, b) {
    case (.head(let x, let n), .head(let y, let m)):
        return n == m && x.startLine == y.startLine && x.headers.fields == y.headers.fields
    case (.error(let x, let n), .error(let y, let m)):
        return n == m && x == y
    case (.incomplete, .incomplete):
        return true
    default:
        return false
    }
}

func readHead(_ bytes: [UInt8], plan: [Int]) -> HeadResult {
    var reader = HTTPHeadReader(limit: Admission.maximumHeadLength)
    var consumed = 0
    var result = HeadResult.incomplete
    forEachPiece(bytes, plan) { piece in
        var input = UnsafeRawBufferPointer(piece)
        let before = input
        do throws(HTTPHeadError) {
            let head = try reader.read(&input)
            consumed += consumedPrefix(before, input)
            guard let head else {
                require(input.isEmpty, "the head reader asked for more with \(input.count) bytes left")
                require(consumed < Admission.maximumHeadLength, "the head reader holds \(consumed) bytes")
                return true
            }
            require(consumed >= 4 && bytes[(consumed - 4)..<consumed].elementsEqual([0x0D, 0x0A, 0x0D, 0x0A]),
                    "the head reader did not stop right after the blank line")
            result = .head(head, consumed: consumed)
        } catch {
            consumed += consumedPrefix(before, input)
            require(consumed <= Admission.maximumHeadLength, "the head reader took \(consumed) bytes before refusing")
            _ = Admission.rejection(for: error)
            result = .error(error, consumed: consumed)
        }
        return false
    }
    return result
}

/// Writes the client's request for what was admitted, reads it as the emulator, and checks the
/// admission is the same.
func checkClientRequest(_ request: WebSocketUpgradeRequestHead, _ admission: AdmissionRequest) {
    guard let keyBytes = HandshakeCrypto.base64Decode(request.key) else { return }
    let client = WebSocketUpgradeRequest(
        host: request.headers.first("host") ?? "example.com", mode: admission.side.mode,
        accessToken: admission.accessToken, clientToken: admission.clientToken,
        protocols: [admission.subprotocol], keyBytes: keyBytes)
    // The proxy refuses values it could not send (control characters, over 4 KB in all).
    guard let bytes = try? client.encoded() else { return }
    switch Admission.read(bytes) {
    case .failure(let rejection):
        require(false, "a request written from an admitted one is refused: \(rejection)")
    case .success(let (_, again)):
        require(again == admission, "a request written from an admitted one is admitted differently: \(again) vs \(admission)")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = inputBytes(data, size)
    let plans = splitPlans(count: bytes.count, seed: fnv1a(bytes))
    let whole = readHead(bytes, plan: plans[0])
    for plan in plans.dropFirst() {
        require(sameResult(readHead(bytes, plan: plan), whole), "the head reader depends on how the input is split (\(plan.count) pieces)")
    }
    guard case .head(let head, _) = whole else { return 0 }
    switch Admission.check(head) {
    case .failure(let rejection):
        require(rejection.status >= 400 && rejection.status <= 599, "refused with status \(rejection.status)")
        _ = rejection.description
    case .success(let (request, admission)):
        require(HandshakeCrypto.base64Decode(request.key)?.count == 16, "key '\(request.key)' is not 16 bytes of base64")
        require(request.protocols.contains(admission.subprotocol) && TunnelSubprotocol.all.contains(admission.subprotocol),
                "subprotocol \(admission.subprotocol) was chosen from \(request.protocols)")
        require(!admission.accessToken.isEmpty, "an empty access token was admitted")
        if let token = admission.clientToken { require(isValidClientToken(token), "client token '\(token)' was admitted") }
        _ = request.path

        let switching = WebSocketUpgradeResponse.switching(key: request.key, subprotocol: admission.subprotocol)
        var proxyRequest = WebSocketUpgradeRequest(host: "example.com", mode: admission.side.mode, accessToken: "t",
                                                   clientToken: nil, protocols: request.protocols,
                                                   keyBytes: [UInt8](repeating: 0, count: 16))
        proxyRequest.key = request.key
        var reader = WebSocketUpgradeResponseReader(request: proxyRequest)
        let outcome = switching.withUnsafeBytes { raw -> Result<WebSocketUpgradeOutcome?, WebSocketUpgradeError> in
            var input = raw
            do throws(WebSocketUpgradeError) { return .success(try reader.read(&input)) } catch { return .failure(error) }
        }
        require(outcome == .success(.accepted(subprotocol: admission.subprotocol, channelId: nil)),
                "the proxy does not accept the emulator's 101: \(outcome)")
        checkClientRequest(request, admission)
    }
    return 0
}
