// Byte-level tests of the web proxy pieces (docs/PROTOCOL.md §2.3): the proxy URL of https_proxy,
// the no_proxy test, the exact CONNECT request, and the reading of the proxy's answer cut at
// every split point, with the bytes after the answer's head handed back untouched.
import Testing
import TunnelCore

private let endpoint = "data.tunneling.iot.us-east-1.amazonaws.com"
/// Distinctive enough that finding it in an error text cannot be a coincidence.
private let password = "s3cretPassw0rd"

private func utf8(_ s: String) -> [UInt8] { Array(s.utf8) }

private func parsed(_ url: String) -> Result<WebProxy, WebProxyError> {
    do throws(WebProxyError) {
        return .success(try WebProxy(url: url))
    } catch {
        return .failure(error)
    }
}

// MARK: Driving the answer reader

private enum AnswerEnd: Equatable {
    /// The answer, and every input byte after its head.
    case answer(WebProxyAnswer, leftover: [UInt8])
    case error(WebProxyError)
    case needMore
    /// `read` returned nil without taking all of its input, which would stall a read loop.
    case stalled(bytesLeft: Int)
}

/// Feeds `pieces` to a fresh reader, one `read` per piece, as the connection does per socket read.
private func readAnswer(_ pieces: [[UInt8]], limit: Int = WebProxyAnswerReader.defaultLimit) -> AnswerEnd {
    var reader = WebProxyAnswerReader(limit: limit)
    var answer: WebProxyAnswer? = nil
    var leftover: [UInt8] = []
    for piece in pieces {
        if answer != nil {
            leftover += piece
            continue
        }
        var end: AnswerEnd? = nil
        piece.withUnsafeBytes { raw in
            var input = raw
            do throws(WebProxyError) {
                answer = try reader.read(&input)
                if answer != nil {
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
    if let answer { return .answer(answer, leftover: leftover) }
    return .needMore
}

/// Reads `stream` cut in every way `splits(of:)` lists; returns the cuts that ended differently.
private func mismatchedSplits(_ stream: [UInt8], expected: AnswerEnd, limit: Int = WebProxyAnswerReader.defaultLimit) -> [String] {
    var bad: [String] = []
    for lengths in splits(of: stream.count) {
        let end = readAnswer(cut(stream, lengths), limit: limit)
        if end != expected { bad.append("\(lengths) -> \(end)") }
        if bad.count > 5 { break }
    }
    return bad
}

struct WebProxyAnswerCase: Sendable, CustomTestStringConvertible {
    var name: String
    var answer: String
    var expected: WebProxyAnswer
    /// Bytes after the head: the service's first TLS bytes, or a refusal's body.
    var after: [UInt8] = []
    var testDescription: String { name }
}

private let serverHelloStart = bytes("16 03 03 00 7a 02 00 00 76 03 03")

private let answerCases: [WebProxyAnswerCase] = [
    WebProxyAnswerCase(name: "squid's 200", answer: "HTTP/1.1 200 Connection established\r\n\r\n",
                       expected: .established(status: 200)),
    WebProxyAnswerCase(name: "HTTP/1.0 200 with a header, then TLS bytes in the same read",
                       answer: "HTTP/1.0 200 OK\r\nProxy-Agent: tinyproxy/1.11\r\n\r\n",
                       expected: .established(status: 200), after: serverHelloStart),
    WebProxyAnswerCase(name: "any 2xx opens the tunnel", answer: "HTTP/1.1 204 No Content\r\nVia: 1.1 gw\r\n\r\n",
                       expected: .established(status: 204), after: [0x16]),
    WebProxyAnswerCase(name: "status line without a reason", answer: "HTTP/1.1 200\r\n\r\n",
                       expected: .established(status: 200)),
    WebProxyAnswerCase(name: "407 with its body left unread",
                       answer: "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"gw\"\r\n"
                           + "Content-Length: 5\r\n\r\n",
                       expected: .refused(status: 407, reason: "Proxy Authentication Required"), after: utf8("hello")),
    WebProxyAnswerCase(name: "403", answer: "HTTP/1.1 403 Forbidden\r\nX-Squid-Error: ERR_ACCESS_DENIED 0\r\n\r\n",
                       expected: .refused(status: 403, reason: "Forbidden")),
    WebProxyAnswerCase(name: "502 with a tab in the reason", answer: "HTTP/1.1 502 Bad\tGateway\r\n\r\n",
                       expected: .refused(status: 502, reason: "Bad?Gateway")),
    WebProxyAnswerCase(name: "a redirect is a refusal", answer: "HTTP/1.1 302 Found\r\nLocation: http://portal/\r\n\r\n",
                       expected: .refused(status: 302, reason: "Found")),
]

struct WebProxyMalformedCase: Sendable, CustomTestStringConvertible {
    var name: String
    var answer: [UInt8]
    /// Words the error must contain.
    var mentions: [String]
    var limit: Int = WebProxyAnswerReader.defaultLimit
    var testDescription: String { name }
}

private let malformedCases: [WebProxyMalformedCase] = [
    WebProxyMalformedCase(name: "not HTTP at all", answer: utf8("SSH-2.0-OpenSSH_9.2\r\n\r\n"), mentions: ["start line"]),
    WebProxyMalformedCase(name: "three words, not HTTP", answer: utf8("SSH-2.0 OpenSSH_9.2 Debian\r\n\r\n"),
                          mentions: ["status line", "SSH-2.0 OpenSSH_9.2 Debian"]),
    WebProxyMalformedCase(name: "two words, not HTTP", answer: utf8("SSH-2.0-OpenSSH_9.2 Debian\r\n\r\n"),
                          mentions: ["status line: \"SSH-2.0-OpenSSH_9.2 Debian\""]),
    WebProxyMalformedCase(name: "HTTP/2 version", answer: utf8("HTTP/2 200 OK\r\n\r\n"), mentions: ["status line"]),
    WebProxyMalformedCase(name: "two-digit status", answer: utf8("HTTP/1.1 20 OK\r\n\r\n"), mentions: ["status line"]),
    WebProxyMalformedCase(name: "status not a number", answer: utf8("HTTP/1.1 2x0 OK\r\n\r\n"), mentions: ["status line"]),
    WebProxyMalformedCase(name: "status below 100", answer: utf8("HTTP/1.1 099 Odd\r\n\r\n"), mentions: ["status line"]),
    WebProxyMalformedCase(name: "empty status line", answer: utf8("\r\n\r\n"), mentions: ["empty start line"]),
    WebProxyMalformedCase(name: "line feed without carriage return", answer: utf8("HTTP/1.1 200 OK\n\n"),
                          mentions: ["line feed without carriage return"]),
    WebProxyMalformedCase(name: "carriage return without line feed", answer: utf8("HTTP/1.1 200 OK\r\nVia: a\rb\r\n\r\n"),
                          mentions: ["carriage return without line feed"]),
    WebProxyMalformedCase(name: "header without a colon", answer: utf8("HTTP/1.1 200 OK\r\nVia 1.1 gw\r\n\r\n"),
                          mentions: ["without a name and a colon"]),
    WebProxyMalformedCase(name: "NUL in a header", answer: utf8("HTTP/1.1 200 OK\r\nVia: a") + [0] + utf8("b\r\n\r\n"),
                          mentions: ["NUL"]),
    WebProxyMalformedCase(name: "header line longer than the limit", answer: utf8("HTTP/1.1 200 OK\r\nVia: " + String(repeating: "a", count: 80)),
                          mentions: ["longer than 64 bytes"], limit: 64),
    WebProxyMalformedCase(name: "no empty line within the limit",
                          answer: utf8("HTTP/1.1 200 OK\r\n" + String(repeating: "Via: x\r\n", count: 8)),
                          mentions: ["longer than 64 bytes"], limit: 64),
]

// MARK: Tests

@Suite("Web proxy (HTTP CONNECT)")
struct WebProxyTests {

    // MARK: Proxy URL

    @Test("Proxy URLs that parse: scheme optional, port 3128 by default, IPv6 in brackets, case")
    func goodURLs() {
        let cases: [(String, String, UInt16)] = [
            ("proxy.example.com", "proxy.example.com", 3128),
            ("http://proxy.example.com:8080", "proxy.example.com", 8080),
            ("HTTP://Proxy.Example.COM:8080/", "proxy.example.com", 8080),
            ("  http://10.0.0.1:1  ", "10.0.0.1", 1),
            ("http://my_proxy.lan:65535", "my_proxy.lan", 65535),
            ("http://[2001:DB8::1]:8080", "2001:db8::1", 8080),
            ("[::1]", "::1", 3128),
            ("http://[::ffff:10.0.0.1]/", "::ffff:10.0.0.1", 3128),
        ]
        for (url, host, port) in cases {
            #expect(parsed(url) == .success(WebProxy(host: host, port: port)), "\(url)")
        }
        #expect(WebProxy(host: "2001:db8::1", port: 8080).description == "http://[2001:db8::1]:8080")
        #expect(WebProxy(host: "proxy", port: 3128).address == "proxy:3128")
    }

    @Test("Credentials: split at the first ':' and the last '@', percent-decoded, '+' kept")
    func credentials() {
        let cases: [(String, [UInt8])] = [
            ("http://user:pass@proxy:3128", utf8("user:pass")),
            ("http://Aladdin:open%20sesame@proxy", utf8("Aladdin:open sesame")),
            ("http://us%65r:p%40ss%3Aword@proxy", utf8("user:p@ss:word")),
            ("http://user:pa:ss@proxy", utf8("user:pa:ss")),
            ("http://user:p@ss@proxy", utf8("user:p@ss")),
            ("http://user:a+b@proxy", utf8("user:a+b")),
            ("http://user:pa/ss@proxy", utf8("user:pa/ss")),
            ("http://user@proxy", utf8("user:")),
            ("user:@proxy", utf8("user:")),
            ("http://user:%E2%82%ac@proxy", utf8("user:") + [0xE2, 0x82, 0xAC]),
        ]
        for (url, credentials) in cases {
            #expect(parsed(url) == .success(WebProxy(host: "proxy", port: 3128, credentials: credentials)), "\(url)")
        }
        // Credentials never show in the description that logs use.
        let proxy = try? WebProxy(url: "http://user:\(password)@proxy:3128")
        #expect(proxy?.description == "http://proxy:3128")
    }

    @Test("Proxy URLs refused, each with a reason that names the problem and never the password",
          arguments: [
              ("", "empty"),
              ("   ", "empty"),
              ("https://user:\(password)@proxy:3128", "https:// proxies"),
              ("socks5://proxy:1080", "scheme 'socks5'"),
              ("ftp://proxy", "scheme 'ftp'"),
              ("http://proxy:0", "port"),
              ("http://proxy:65536", "port"),
              ("http://proxy:99999999999999999999", "port"),
              ("http://proxy:http", "port"),
              ("http://proxy:", "port"),
              ("proxy:/", "port"),
              ("http://[::1]:", "port"),
              ("http://[::1]:/", "port"),
              ("http://proxy:3128/path", "path"),
              ("http://proxy:3128/?q", "path"),
              ("http://2001:db8::1", "brackets"),
              ("http://[2001:db8::1:3128", "']'"),
              ("http://[proxy]:3128", "not an IPv6 address"),
              ("http://[::1]3128", "':PORT'"),
              ("http://[]:3128", "not an IPv6 address"),
              ("http://user:\(password)%00@proxy", "%00"),
              ("http://user:\(password)%4@proxy", "two hex digits"),
              ("http://user:\(password)%zz@proxy", "two hex digits"),
              ("http://:\(password)@proxy", "user name"),
              ("http://us%3Aer:\(password)@proxy", "':'"),
              ("http://user:\(password) x@proxy", "space"),
              ("http://user:\(password)\u{7}@proxy", "control character"),
              ("http://user:\(password)\u{e9}@proxy", "non-ASCII"),
              ("http://", "host name is empty"),
              ("http://user:\(password)@", "host name is empty"),
              ("http://:3128", "host name is empty"),
              ("http://prox!y:3128", "letters, digits"),
              ("http://" + String(repeating: "a", count: 254), "253"),
          ])
    func badURLs(_ url: String, _ mention: String) {
        guard case .failure(let error) = parsed(url) else {
            Issue.record("'\(url)' parsed")
            return
        }
        #expect(error.description.contains(mention), "\(error)")
        #expect(!error.description.contains(password), "\(error)")
    }

    // MARK: no_proxy

    @Test("no_proxy: *, exact names, domains with or without a leading dot, case, spaces")
    func noProxyNames() {
        let bypassing = ["*", " * ", "localhost,*", endpoint, "amazonaws.com", ".amazonaws.com", "*.amazonaws.com",
                         "AMAZONAWS.COM", "localhost,  .us-east-1.amazonaws.com ,10.0.0.0", "iot.us-east-1.amazonaws.com"]
        for list in bypassing {
            #expect(WebProxy.bypasses(list, host: endpoint), "\(list)")
        }
        let notBypassing = ["", ",", " , ", "localhost", "zonaws.com", "aws.com.", "amazonaws.com.cn", "amazonaws.com:443",
                            "data.tunneling.iot.us-east-1.amazonaws.com.example", "*.example.com", "10.0.0.0/8", ".", "*."]
        for list in notBypassing {
            #expect(!WebProxy.bypasses(list, host: endpoint), "\(list)")
        }
        #expect(WebProxy.bypasses("example.com", host: "Example.COM"))
        #expect(WebProxy.bypasses("Example.com", host: "a.b.example.com"))
    }

    @Test("no_proxy: IP literals compare as addresses, never as name suffixes")
    func noProxyAddresses() {
        #expect(WebProxy.bypasses("127.0.0.1", host: "127.0.0.1"))
        #expect(WebProxy.bypasses("localhost,127.0.0.1", host: "127.0.0.1"))
        #expect(WebProxy.bypasses("*", host: "127.0.0.1"))
        #expect(!WebProxy.bypasses("0.0.1", host: "127.0.0.1"))
        #expect(!WebProxy.bypasses(".0.0.1", host: "127.0.0.1"))
        #expect(!WebProxy.bypasses("127.0.0.2", host: "127.0.0.1"))
        #expect(WebProxy.bypasses("[::1]", host: "::1"))
        #expect(WebProxy.bypasses("0:0::1", host: "::1"))
        #expect(WebProxy.bypasses("2001:DB8::1", host: "2001:db8:0::1"))
        #expect(!WebProxy.bypasses("::2", host: "::1"))
        #expect(!WebProxy.bypasses("127.0.0.1", host: "localhost"))
    }

    // MARK: CONNECT request

    @Test("CONNECT request bytes without credentials")
    func connectWithoutCredentials() {
        let proxy = WebProxy(host: "proxy", port: 3128)
        #expect(proxy.connectRequest(host: endpoint, port: 443) == utf8(
            "CONNECT data.tunneling.iot.us-east-1.amazonaws.com:443 HTTP/1.1\r\n"
            + "Host: data.tunneling.iot.us-east-1.amazonaws.com:443\r\n"
            + "\r\n"))
        #expect(proxy.connectRequest(host: "::1", port: 8443) == utf8("CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n"))
    }

    @Test("CONNECT request bytes with Basic credentials (RFC 7617 §2 example)")
    func connectWithCredentials() throws {
        let proxy = try WebProxy(url: "http://Aladdin:open%20sesame@proxy:8080")
        #expect(proxy.connectRequest(host: "127.0.0.1", port: 40001) == utf8(
            "CONNECT 127.0.0.1:40001 HTTP/1.1\r\n"
            + "Host: 127.0.0.1:40001\r\n"
            + "Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n"
            + "\r\n"))
        // Bytes outside ASCII are sent as they are (UTF-8 here), base64-encoded.
        let euro = try WebProxy(url: "u:%E2%82%AC@proxy")
        #expect(String(decoding: euro.connectRequest(host: "h", port: 1), as: UTF8.self).contains("Basic dTrigqw=\r\n"))
    }

    // MARK: Reading the answer

    @Test("Answers read alike at every split, the bytes after the head left for TLS", arguments: answerCases)
    func answers(_ c: WebProxyAnswerCase) {
        let stream = utf8(c.answer) + c.after
        #expect(mismatchedSplits(stream, expected: .answer(c.expected, leftover: c.after)) == [])
    }

    @Test("Malformed and oversized answers fail alike at every split", arguments: malformedCases)
    func malformed(_ c: WebProxyMalformedCase) {
        let whole = readAnswer([c.answer], limit: c.limit)
        guard case .error(let error) = whole else {
            Issue.record("\(c.name): \(whole)")
            return
        }
        for word in c.mentions {
            #expect(error.description.contains(word), "\(error)")
        }
        #expect(mismatchedSplits(c.answer, expected: whole, limit: c.limit) == [])
    }

    @Test("An incomplete answer asks for more, and takes every byte it was given")
    func incomplete() {
        let head = utf8("HTTP/1.1 200 Connection established\r\n\r\n")
        for n in 0..<head.count {
            #expect(readAnswer([Array(head[0..<n])]) == .needMore, "\(n) bytes")
        }
    }

    @Test("The default limit is 8 KiB: a head of 8192 bytes is read, a longer one is refused")
    func defaultLimit() {
        #expect(WebProxyAnswerReader.defaultLimit == 8192)
        let start = "HTTP/1.1 200 OK\r\nVia: "
        let fits = utf8(start + String(repeating: "a", count: 8192 - start.utf8.count - 4) + "\r\n\r\n")
        #expect(fits.count == 8192)
        #expect(readAnswer([fits + [0x16]]) == .answer(.established(status: 200), leftover: [0x16]))
        let tooLong = utf8(start + String(repeating: "a", count: 20_000))
        #expect(readAnswer([tooLong]) == .error(.malformedAnswer("HTTP head longer than 8192 bytes without an end (no empty line after the headers)")))
    }

    @Test("Printable reasons: control bytes become '?', at most 128 bytes kept")
    func reasonLimits() {
        let long = String(repeating: "r", count: 300)
        #expect(readAnswer([utf8("HTTP/1.1 503 \(long)\r\n\r\n")]) == .answer(.refused(status: 503, reason: String(repeating: "r", count: 128)), leftover: []))
        #expect(readAnswer([utf8("HTTP/1.1 503 a\u{7f}b\u{1b}c\r\n\r\n")]) == .answer(.refused(status: 503, reason: "a?b?c"), leftover: []))
    }
}
