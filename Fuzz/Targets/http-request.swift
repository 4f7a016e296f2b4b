/// Fuzz target `http-request`: the emulator's control-plane request reader (HTTPRequestParser in
/// Sources/TunnelService/HTTPRequestParser.swift) over a byte stream of pipelined requests, with
/// each body read as JSON (JSONValue.parse) as the control plane does.
///
/// Properties checked:
/// - the parser only consumes a prefix of each piece, asks for more only once a piece is used up,
///   and after a failure keeps failing;
/// - the same requests and failures come out whether the stream arrives whole, byte by byte, or
///   in mixed pieces;
/// - a request's body has the length its Content-Length gave, at most the parser's limit, and
///   failures carry one of the statuses the parser documents.
@testable import TunnelCore
@testable import TunnelService

enum RequestRecord: Equatable {
    case expectContinue
    case request(method: String, target: String, version: String, fields: [HTTPHeader], body: [UInt8])
    case failure(status: Int, message: String)
}

/// A small body limit, so that bodies over it are within reach of the fuzzer's input lengths.
let bodyLimit = 1000

func readRequests(_ bytes: [UInt8], plan: [Int]) -> [RequestRecord] {
    var parser = HTTPRequestParser(maximumBody: bodyLimit)
    var records: [RequestRecord] = []
    forEachPiece(bytes, plan) { piece in
        var input = UnsafeRawBufferPointer(piece)
        while true {
            let before = input
            let result = parser.next(&input)
            _ = consumedPrefix(before, input)
            switch result {
            case .success(nil):
                require(input.isEmpty, "the parser asked for more with \(input.count) bytes left")
                return true
            case .success(.expectContinue?):
                records.append(.expectContinue)
            case .success(.request(let request)?):
                let lengths = request.headers.values("content-length")
                require(request.body.count == (lengths.isEmpty ? 0 : Int(lengths[0]) ?? -1),
                        "a body of \(request.body.count) bytes for Content-Length \(lengths)")
                require(request.body.count <= bodyLimit, "a body of \(request.body.count) bytes over the limit")
                _ = request.keepAlive
                _ = request.path
                records.append(.request(method: request.method, target: request.target, version: request.version,
                                        fields: request.headers.fields, body: request.body))
            case .failure(let failure):
                require([400, 411, 413, 431].contains(failure.status), "failure status \(failure.status)")
                var empty = UnsafeRawBufferPointer(start: nil, count: 0)
                guard case .failure = parser.next(&empty) else {
                    require(false, "the parser recovered after a failure")
                    return false
                }
                records.append(.failure(status: failure.status, message: failure.message))
                return false
            }
        }
    }
    return records
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = inputBytes(data, size)
    let plans = splitPlans(count: bytes.count, seed: fnv1a(bytes))
    let whole = readRequests(bytes, plan: plans[0])
    for plan in plans.dropFirst() {
        let other = readRequests(bytes, plan: plan)
        require(other == whole, "the request parser depends on how the input is split: \(whole) whole, \(other) in \(plan.count) pieces")
    }
    for record in whole {
        if case .request(_, _, _, _, let body) = record, !body.isEmpty {
            _ = try? JSONValue.parse(body)
        }
    }
    return 0
}
