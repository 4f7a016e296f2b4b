import TunnelCore

/// An HTTP/1.1 request as the control plane needs it.
public struct HTTPRequest {
    public var method: String
    public var target: String
    public var version: String
    public var headers: HTTPHeaders
    public var body: [UInt8]

    /// HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 closes unless told to keep it.
    public var keepAlive: Bool {
        if headers.contains("connection", token: "close") { return false }
        if version == "HTTP/1.0" { return headers.contains("connection", token: "keep-alive") }
        return true
    }

    /// The path part of the target.
    public var path: String {
        guard let q = target.firstIndex(of: "?") else { return target }
        return String(target[..<q])
    }
}

/// Incremental reader of HTTP/1.1 requests: a head (bounded by `HTTPHeadReader`), then a body of
/// `Content-Length` bytes (bounded by `maximumBody`). Chunked request bodies are refused: the
/// AWS SDKs and CLI always send a length, and refusing keeps the reader small.
public struct HTTPRequestParser {
    public enum Event {
        /// The client sent `Expect: 100-continue`: answer 100 before it sends the body.
        case expectContinue
        case request(HTTPRequest)
    }

    public struct Failure: Error, Equatable {
        public var status: Int
        public var message: String
    }

    public static let maximumHead = 16 * 1024
    public let maximumBody: Int

    private enum State {
        case head(HTTPHeadReader)
        case body(HTTPHead, remaining: Int, collected: [UInt8])
        case failed
    }

    private var state: State = .head(HTTPHeadReader(limit: HTTPRequestParser.maximumHead))

    public init(maximumBody: Int = 1 << 20) { self.maximumBody = maximumBody }

    /// Consumes bytes from the front of `input`; returns at most one event per call (nil when
    /// more bytes are needed). After a failure every call fails the same way.
    public mutating func next(_ input: inout UnsafeRawBufferPointer) -> Result<Event?, Failure> {
        switch state {
        case .failed:
            return .failure(Failure(status: 400, message: "The connection is no longer usable."))
        case .head(var reader):
            let parsed: HTTPHead?
            do {
                parsed = try reader.read(&input)
            } catch {
                state = .failed
                if case .tooLarge = error { return .failure(Failure(status: 431, message: "The request head is too large.")) }
                return .failure(Failure(status: 400, message: "Malformed request: \(error)"))
            }
            guard let head = parsed else {
                state = .head(reader)
                return .success(nil)
            }
            if head.headers.first("transfer-encoding") != nil {
                state = .failed
                return .failure(Failure(status: 411, message: "Chunked request bodies are not supported; send Content-Length."))
            }
            var length = 0
            let lengths = head.headers.values("content-length")
            if !lengths.isEmpty {
                guard lengths.count == 1, let n = Int(lengths[0]), n >= 0, lengths[0].allSatisfy(\.isASCII) else {
                    state = .failed
                    return .failure(Failure(status: 400, message: "Invalid Content-Length."))
                }
                length = n
            }
            guard length <= maximumBody else {
                state = .failed
                return .failure(Failure(status: 413, message: "The request body is larger than \(maximumBody) bytes."))
            }
            state = .body(head, remaining: length, collected: [])
            if length > 0 && head.headers.contains("expect", token: "100-continue") { return .success(.expectContinue) }
            return next(&input)
        case .body(let head, let remaining, var collected):
            let n = min(remaining, input.count)
            if n > 0 {
                collected.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[0..<n]))
                input = UnsafeRawBufferPointer(rebasing: input[n...])
            }
            if remaining - n > 0 {
                state = .body(head, remaining: remaining - n, collected: collected)
                return .success(nil)
            }
            state = .head(HTTPHeadReader(limit: HTTPRequestParser.maximumHead))
            let (method, target, version) = head.startLine
            return .success(.request(HTTPRequest(method: method, target: target, version: version,
                                                 headers: head.headers, body: collected)))
        }
    }

    /// A complete response with a body and the headers the AWS SDKs look at.
    public static func response(status: Int, contentType: String, body: [UInt8], keepAlive: Bool,
                                requestId: String) -> [UInt8] {
        var text = "HTTP/1.1 \(status) \(reasonPhrase(status))\r\n"
        text += "Content-Type: \(contentType)\r\n"
        text += "Content-Length: \(body.count)\r\n"
        text += "x-amzn-RequestId: \(requestId)\r\n"
        text += keepAlive ? "Connection: keep-alive\r\n" : "Connection: close\r\n"
        text += "\r\n"
        return Array(text.utf8) + body
    }

    public static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 100: return "Continue"
        case 200: return "OK"
        case 400: return "Bad Request"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 411: return "Length Required"
        case 413: return "Payload Too Large"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        default: return "Error"
        }
    }
}
