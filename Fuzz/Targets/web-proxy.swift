/// Fuzz target `web-proxy`: what a web proxy answers to CONNECT (WebProxyAnswerReader in
/// Sources/TunnelCore/WebProxy.swift, over HTTPHeadReader), and the two texts of the environment
/// read with the same input: the proxy URL (`https_proxy`) and a `no_proxy` list.
///
/// Properties checked:
/// - the same answer (or error), after the same number of bytes, however the input is split;
///   the reader asks for more only once a piece is used up, and never takes more than 8 KiB;
/// - after an answer it stops exactly at the end of the head (the rest is for TLS); a 2xx is
///   "established", anything else "refused" with a reason of at most 128 printable bytes;
/// - a URL that parses has a port from 1 to 65535, and its description (what logs show) has no
///   credentials and parses back to the same host and port;
/// - a `no_proxy` list never crashes the test, and `*` or the host itself always bypasses.
import TunnelCore

enum AnswerResult: Equatable {
    case answer(WebProxyAnswer, consumed: Int)
    case error(WebProxyError, consumed: Int)
    case needMore
}

func readAnswer(_ bytes: [UInt8], plan: [Int]) -> AnswerResult {
    var reader = WebProxyAnswerReader()
    var consumed = 0
    var result = AnswerResult.needMore
    forEachPiece(bytes, plan) { piece in
        var input = UnsafeRawBufferPointer(piece)
        let before = input
        do throws(WebProxyError) {
            let answer = try reader.read(&input)
            consumed += consumedPrefix(before, input)
            guard let answer else {
                require(input.isEmpty, "the reader asked for more with \(input.count) bytes left")
                return true
            }
            result = .answer(answer, consumed: consumed)
        } catch {
            consumed += consumedPrefix(before, input)
            _ = error.description
            result = .error(error, consumed: consumed)
        }
        return false
    }
    return result
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = inputBytes(data, size)
    let plans = splitPlans(count: bytes.count, seed: fnv1a(bytes))
    let whole = readAnswer(bytes, plan: plans[0])
    for plan in plans.dropFirst() {
        let other = readAnswer(bytes, plan: plan)
        require(other == whole, "the answer reader depends on how the input is split: \(whole) whole, \(other) in \(plan.count) pieces")
    }
    switch whole {
    case .answer(let answer, let consumed):
        require(consumed <= WebProxyAnswerReader.defaultLimit, "an answer of \(consumed) bytes was read past the limit")
        require(consumed >= 4 && bytes[(consumed - 4)..<consumed].elementsEqual([0x0D, 0x0A, 0x0D, 0x0A]),
                "the reader did not stop at the end of the head")
        switch answer {
        case .established(let status):
            require(status >= 200 && status <= 299, "status \(status) established a tunnel")
        case .refused(let status, let reason):
            require(status >= 100 && status <= 999 && !(status >= 200 && status <= 299), "status \(status) was refused")
            require(reason.utf8.count <= 128 * 3 && !reason.utf8.contains { $0 < 0x20 || $0 == 0x7F },
                    "a refusal's reason is not short and printable: \(reason.utf8.count) bytes")
        }
    case .error(_, let consumed):
        require(consumed <= WebProxyAnswerReader.defaultLimit, "\(consumed) bytes read before an error, past the limit")
    case .needMore:
        require(bytes.count < WebProxyAnswerReader.defaultLimit, "\(bytes.count) bytes without an answer or an error")
    }

    let text = String(decoding: bytes, as: UTF8.self)
    if let proxy = try? WebProxy(url: text) {
        require(proxy.port >= 1, "port 0 accepted")
        require(!proxy.description.contains("@"), "the description shows credentials")
        let again = try? WebProxy(url: proxy.description)
        require(again == WebProxy(host: proxy.host, port: proxy.port), "the description does not parse back: \(proxy.description)")
        _ = proxy.connectRequest(host: "data.tunneling.iot.us-east-1.amazonaws.com", port: 443)
    }
    let host = "data.tunneling.iot.us-east-1.amazonaws.com"
    _ = WebProxy.bypasses(text, host: host)
    _ = WebProxy.bypasses(text, host: "127.0.0.1")
    require(WebProxy.bypasses(text + ",*", host: host), "'*' at the end of a list did not bypass")
    require(WebProxy.bypasses(text + "," + host, host: host), "the host itself at the end of a list did not bypass")
    return 0
}
