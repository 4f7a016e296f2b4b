// Byte-level tests of the tunnel notification parser (Sources/TunnelCore/TunnelNotification.swift):
// the payload AWS IoT Secure Tunneling publishes on $aws/things/THING/tunnels/notify, read
// whole, with the JSON grammar of RFC 8259 enforced, every malformed case refused with its own
// error, every truncation refused without a crash, and the token never in an error text.
import Testing
@testable import TunnelCore

/// Distinctive enough that finding it in an error text cannot be a coincidence.
private let token = "AQGAAXiSecretTokenValue-0123456789abcdef"
private let secret = "SecretToken"

/// AWS's example notification, with our token.
private let example = #"{"clientAccessToken":"\#(token)","clientMode":"destination","region":"us-east-1","services":["SSH"]}"#
private let expected = TunnelNotification(clientAccessToken: token, clientMode: "destination", region: "us-east-1",
                                          services: ["SSH"])

private func parsed(_ bytes: [UInt8]) -> Result<TunnelNotification, TunnelNotificationError> {
    bytes.withUnsafeBytes { b in
        do throws(TunnelNotificationError) {
            return .success(try TunnelNotification.parse(b))
        } catch {
            return .failure(error)
        }
    }
}

private func parsed(_ text: String) -> Result<TunnelNotification, TunnelNotificationError> { parsed(Array(text.utf8)) }

/// A notification from raw JSON values (nil leaves the key out), with `extra` members after them.
private func notification(token value: String? = "\"" + token + "\"", mode: String? = #""destination""#,
                          region: String? = #""us-east-1""#, services: String? = #"["SSH"]"#,
                          extra: [String] = []) -> String {
    var members: [String] = []
    if let value { members.append(#""clientAccessToken":"# + value) }
    if let mode { members.append(#""clientMode":"# + mode) }
    if let region { members.append(#""region":"# + region) }
    if let services { members.append(#""services":"# + services) }
    return "{" + (members + extra).joined(separator: ",") + "}"
}

/// The byte offset of the first occurrence of `needle` in `text`.
private func offset(of needle: String, in text: String) -> Int {
    let t = Array(text.utf8), n = Array(needle.utf8)
    for i in 0...(t.count - n.count) where Array(t[i..<(i + n.count)]) == n { return i }
    preconditionFailure("\(needle) is not in \(text)")
}

/// What `NotificationReader` decodes from one JSON string (quotes included).
private func decoded(_ json: [UInt8]) -> Result<[UInt8], TunnelNotificationError> {
    json.withUnsafeBytes { b in
        var reader = NotificationReader(b)
        do throws(TunnelNotificationError) {
            return .success(try reader.string(keep: true))
        } catch {
            return .failure(error)
        }
    }
}

private func malformed(_ offset: Int, _ key: String?, _ problem: String) -> Result<TunnelNotification, TunnelNotificationError> {
    .failure(.malformed(offset: offset, key: key, problem: problem))
}

private let tokenKey = "clientAccessToken"
private let badEscape = "a backslash in a string is followed by a byte that is none of \" \\ / b f n r t u"
private let loneLow = "a \\u escape is the second half of a UTF-16 surrogate pair without the first"
private let loneHigh = "a \\u escape is the first half of a UTF-16 surrogate pair without the second"

@Suite("Tunnel notifications ($aws/things/THING/tunnels/notify)")
struct TunnelNotificationTests {
    @Test func awsExample() {
        #expect(parsed(example) == .success(expected))
        #expect(parsed(#"{"clientAccessToken":"AQGAAXi","clientMode":"destination","region":"us-east-1","services":["SSH"]}"#)
            == .success(TunnelNotification(clientAccessToken: "AQGAAXi", clientMode: "destination", region: "us-east-1", services: ["SSH"])))
    }

    @Test func severalServices() {
        let text = notification(services: #"["SSH","HTTP","RDP:3389_a-b"]"#)
        #expect(parsed(text) == .success(TunnelNotification(clientAccessToken: token, clientMode: "destination",
                                                            region: "us-east-1", services: ["SSH", "HTTP", "RDP:3389_a-b"])))
    }

    @Test func otherModesAndRegionsAreTheAgentsToJudge() {
        let text = notification(mode: #""source""#, region: #""cn-north-1""#)
        #expect(parsed(text) == .success(TunnelNotification(clientAccessToken: token, clientMode: "source",
                                                            region: "cn-north-1", services: ["SSH"])))
    }

    @Test func keysInAnyOrder() {
        let members = [#""clientAccessToken":"\#(token)""#, #""clientMode":"destination""#, #""region":"us-east-1""#,
                       #""services":["SSH"]"#]
        func permutations(_ items: [String]) -> [[String]] {
            guard items.count > 1 else { return [items] }
            var out: [[String]] = []
            for (i, item) in items.enumerated() {
                var rest = items
                rest.remove(at: i)
                out += permutations(rest).map { [item] + $0 }
            }
            return out
        }
        let all = permutations(members)
        #expect(all.count == 24)
        for order in all {
            let text = "{" + order.joined(separator: ",") + "}"
            #expect(parsed(text) == .success(expected), "\(text)")
        }
    }

    @Test func whitespaceEverywhere() {
        let ws = " \t\r\n"
        let text = ws + "{" + ws + #""clientAccessToken""# + ws + ":" + ws + "\"" + token + "\"" + ws + "," + ws
            + #""clientMode""# + ws + ":" + ws + #""destination""# + ws + "," + ws + #""region""# + ws + ":" + ws
            + #""us-east-1""# + ws + "," + ws + #""services""# + ws + ":" + ws + "[" + ws + #""SSH""# + ws + "," + ws
            + #""HTTP""# + ws + "]" + ws + "," + ws + #""extra""# + ws + ":" + ws + "{" + ws + #""a""# + ws + ":" + ws
            + "[" + ws + "1" + ws + "," + ws + "true" + ws + "]" + ws + "}" + ws + "}" + ws
        #expect(parsed(text) == .success(TunnelNotification(clientAccessToken: token, clientMode: "destination",
                                                            region: "us-east-1", services: ["SSH", "HTTP"])))
        // Only RFC 8259's four whitespace bytes: not a form feed, a vertical tab or a NUL.
        for other: UInt8 in [0x0C, 0x0B, 0x00] {
            let bytes = [other] + Array(example.utf8)
            #expect(parsed(bytes) == malformed(0, nil, "expected a JSON object"))
        }
        // Nor a byte order mark.
        #expect(parsed([0xEF, 0xBB, 0xBF] + Array(example.utf8)) == malformed(0, nil, "expected a JSON object"))
    }

    @Test func everyEscapeDecodes() {
        // \" \\ \/ \b \f \n \r \t, é as \u00e9 and \u00E9, U+1F600 as a surrogate pair, and U+0000.
        let json = Array(#""\"\\\/\b\f\n\r\t\u00e9\u00E9\ud83d\ude00\u0000x""#.utf8)
        #expect(decoded(json) == .success([0x22, 0x5C, 0x2F, 0x08, 0x0C, 0x0A, 0x0D, 0x09, 0xC3, 0xA9, 0xC3, 0xA9,
                                           0xF0, 0x9F, 0x98, 0x80, 0x00, 0x78]))
        // Raw UTF-8 passes as it is; the highest scalar of each UTF-8 length, escaped.
        #expect(decoded(Array("\"é😀\"".utf8)) == .success(Array("é😀".utf8)))
        #expect(decoded(Array(#""\u007f\u07ff\uffff\udbff\udfff""#.utf8)) == .success(
            [0x7F, 0xDF, 0xBF, 0xEF, 0xBF, 0xBF, 0xF4, 0x8F, 0xBF, 0xBF]))
        // In the token, escapes of visible ASCII are the characters themselves.
        let text = notification(token: #""AQGA\u0041\/x\"y\\z""#)
        #expect(parsed(text) == .success(TunnelNotification(clientAccessToken: #"AQGAA/x"y\z"#, clientMode: "destination",
                                                            region: "us-east-1", services: ["SSH"])))
        // In a key: the escaped spelling of a known key is that key.
        #expect(parsed(#"{"client\u0041ccessToken":"\#(token)","clientMode":"destination","region":"us-east-1","services":["SSH"]}"#)
            == .success(expected))
        // In unknown members, every escape is read and skipped.
        let unknown = notification(extra: [#""note":"\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00""#, #""\u00e9\n":1"#])
        #expect(parsed(unknown) == .success(expected))
    }

    @Test func unknownKeysOfEveryTypeAreSkipped() {
        let text = notification(extra: [#""object":{"a":{"b":[1,2,{"c":null}],"d":true},"e":{}}"#, #""array":[[],[[]],{}]"#,
                                        #""numbers":[0,-0,1,-1,12.5,-0.25e-3,1E+2,1e2,6.02e23]"#, #""true":true"#,
                                        #""false":false"#, #""null":null"#, #""string":"x""#, #""":"empty key""#,
                                        #""object":"repeated unknown keys are fine""#])
        #expect(parsed(text) == .success(expected))
        // Unknown members before the known ones too.
        #expect(parsed(#"{"version":2,"clientAccessToken":"\#(token)","clientMode":"destination","region":"us-east-1","services":["SSH"]}"#)
            == .success(expected))
    }

    @Test func nestingUpToTheLimit() {
        // The top-level object is level 1: 15 more levels are accepted, a 16th is not.
        let deepest = notification(extra: [#""x":"# + String(repeating: "[", count: 15) + String(repeating: "]", count: 15)])
        #expect(parsed(deepest) == .success(expected))
        let mixed = notification(extra: [#""x":"# + String(repeating: #"{"a":["#, count: 7) + "{}"
                                         + String(repeating: "]}", count: 7)])
        #expect(parsed(mixed) == .success(expected))
        let tooDeep = notification(extra: [#""x":"# + String(repeating: "[", count: 16) + String(repeating: "]", count: 16)])
        #expect(parsed(tooDeep) == .failure(.tooDeep(offset: offset(of: #""x":"#, in: tooDeep) + 4 + 15)))
        // A depth bomb as big as the payload may be stops at the limit, not at the end.
        let bomb = notification(extra: [#""x":"# + String(repeating: "[", count: 16_000)])
        #expect(parsed(bomb) == .failure(.tooDeep(offset: offset(of: #""x":"#, in: bomb) + 4 + 15)))
    }

    @Test func lengthLimit() {
        let padded = example + String(repeating: " ", count: TunnelNotification.maximumLength - example.utf8.count)
        #expect(padded.utf8.count == TunnelNotification.maximumLength)
        #expect(parsed(padded) == .success(expected))
        #expect(parsed(padded + " ") == .failure(.tooLong(TunnelNotification.maximumLength + 1)))
        #expect(parsed(String(repeating: "x", count: 1_000_000)) == .failure(.tooLong(1_000_000)))
    }

    @Test func everyTruncationFailsCleanly() {
        let rich = notification(token: #""AQGA\u0041\/SecretToken""#, services: #"["SSH", "HTTP"]"#,
                                extra: [#""x":{"a":[1.5e-3,-0,true,false,null,"\ud83d\ude00\n"]}"#])
        #expect(parsed(rich) == .success(TunnelNotification(clientAccessToken: "AQGAA/SecretToken", clientMode: "destination",
                                                            region: "us-east-1", services: ["SSH", "HTTP"])))
        for text in [example, rich, "{}", #"{"a":"\u00e9"}"#] {
            let bytes = Array(text.utf8)
            for n in 0..<bytes.count {
                // Each prefix in an array of exactly its length: a read past it traps here.
                let result = parsed(Array(bytes[0..<n]))
                guard case .failure(let error) = result else {
                    Issue.record("the first \(n) bytes of \(text) parsed")
                    continue
                }
                #expect(!error.description.contains(secret), "\(error)")
            }
        }
        #expect(parsed(Array(example.utf8).dropLast().map { $0 }) == malformed(example.utf8.count - 1, nil,
                                                                              "the payload ends early (expected ',' or '}' after a value)"))
        #expect(parsed("") == malformed(0, nil, "the payload is empty"))
        #expect(parsed(" \n") == malformed(2, nil, "the payload is empty"))
        let open = #"{"clientAccessToken":"AQ"#
        #expect(parsed(open) == malformed(open.utf8.count, tokenKey, "the payload ends early (a string has no closing quote)"))
    }

    @Test func wrongTypes() {
        #expect(parsed(notification(token: "42")) == .failure(.wrongType(key: tokenKey, expected: "a string", found: "a number")))
        #expect(parsed(notification(token: "null")) == .failure(.wrongType(key: tokenKey, expected: "a string", found: "null")))
        #expect(parsed(notification(mode: "true")) == .failure(.wrongType(key: "clientMode", expected: "a string", found: "a boolean")))
        #expect(parsed(notification(region: #"["us-east-1"]"#)) == .failure(.wrongType(key: "region", expected: "a string", found: "an array")))
        #expect(parsed(notification(services: #""SSH""#)) == .failure(.wrongType(key: "services", expected: "an array of strings", found: "a string")))
        #expect(parsed(notification(services: #"{"SSH":22}"#)) == .failure(.wrongType(key: "services", expected: "an array of strings", found: "an object")))
        #expect(parsed(notification(services: #"["SSH",22]"#)) == .failure(.wrongType(key: "services", expected: "an array of strings", found: "an array holding a number")))
        #expect(parsed(notification(services: #"[["SSH"]]"#)) == .failure(.wrongType(key: "services", expected: "an array of strings", found: "an array holding an array")))
        for top in ["[]", #""x""#, "1", "true", "null"] {
            let kind = top == "[]" ? "an array" : top == "1" ? "a number" : top == "true" ? "a boolean" : top == "null" ? "null" : "a string"
            #expect(parsed(top) == .failure(.notAnObject(found: kind)), "\(top)")
        }
        // A value of the wrong type that is not even JSON is reported as broken JSON.
        let broken = notification(token: "1.")
        #expect(parsed(broken) == malformed(offset(of: "1.,", in: broken) + 2, tokenKey, "a number needs a digit after '.'"))
        let truncatedTrue = notification(mode: "tru")
        #expect(parsed(truncatedTrue) == malformed(offset(of: "tru", in: truncatedTrue), "clientMode", "expected true, false or null"))
    }

    @Test func badEscapes() {
        for (value, at, problem) in [(#""AQ\xGA""#, #"\x"#, badEscape), (#""AQ\'""#, #"\'"#, badEscape),
                                     (#""AQ\u00G0""#, #"\u00G0"#, "a \\u escape needs four hex digits"),
                                     (#""AQ\u12""#, #"\u12"#, "a \\u escape needs four hex digits"),
                                     (#""AQ\UD800""#, #"\U"#, badEscape),
                                     (#""AQ\uDC00rest""#, #"\uDC00"#, loneLow),
                                     (#""AQ\udfff""#, #"\udfff"#, loneLow)] {
            let text = notification(token: value)
            #expect(parsed(text) == malformed(offset(of: at, in: text), tokenKey, problem), "\(value)")
        }
        // A first half must be followed at once by a second half.
        for (value, after) in [(#""AQ\uD800""#, #"\uD800"#), (#""AQ\uD800\u0041""#, #"\uD800"#), (#""AQ\ud83dx\ude00""#, #"\ud83d"#),
                               (#""AQ\uD800\uD800""#, #"\uD800"#), (#""AQ\uDBFF\n""#, #"\uDBFF"#)] {
            let text = notification(token: value)
            #expect(parsed(text) == malformed(offset(of: after, in: text) + 6, tokenKey, loneHigh), "\(value)")
        }
        // The same in unknown members, which are checked as strictly.
        let text = notification(extra: [#""note":"\uDE00""#])
        #expect(parsed(text) == malformed(offset(of: #"\uDE00"#, in: text), nil, loneLow))
        let inKey = notification(extra: [#""n\ote":1"#])
        #expect(parsed(inKey) == malformed(offset(of: #"\o"#, in: inKey), nil, badEscape))
    }

    @Test func controlCharactersInStrings() {
        for code: UInt8 in [0x00, 0x09, 0x0A, 0x0D, 0x1F] {
            var bytes = Array(notification(token: #""AQ#G""#).utf8)
            let at = offset(of: "#", in: notification(token: #""AQ#G""#))
            bytes[at] = code
            #expect(parsed(bytes) == malformed(at, tokenKey, "a string holds a raw control character (code \(code)); it must be escaped"))
        }
        // DEL (0x7F) is not a control character to JSON, but the token header refuses it.
        var bytes = Array(notification(token: #""AQ#G""#).utf8)
        bytes[offset(of: "#", in: notification(token: #""AQ#G""#))] = 0x7F
        guard case .failure(.invalidValue(let key, _)) = parsed(bytes) else { Issue.record("DEL accepted"); return }
        #expect(key == tokenKey)
    }

    @Test func invalidUTF8IsRefused() {
        for bad: [UInt8] in [[0xC3, 0x28], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xFF], [0xE2, 0x82]] {
            let text = notification(extra: [#""note":"@""#])
            var bytes = Array(text.utf8)
            let at = offset(of: "@", in: text)
            bytes.replaceSubrange(at...at, with: bad)
            #expect(parsed(bytes) == .failure(.notUTF8), "\(bad)")
        }
    }

    @Test func grammarErrors() {
        let cases: [(String, String, String?, String)] = [
            (#"{"clientAccessToken" "x"}"#, #""x""#, nil, "expected ':' after a key"),
            (#"{"clientAccessToken":"x" "clientMode":"y"}"#, #""clientMode""#, nil, "expected ',' or '}' after a value"),
            (#"{"clientAccessToken":"x",}"#, "}", nil, "expected a key in double quotes"),
            (#"{clientAccessToken:"x"}"#, "clientAccessToken", nil, "expected a key in double quotes"),
            (#"{'clientAccessToken':'x'}"#, "'", nil, "expected a key in double quotes"),
            (#"{"a":[1,]}"#, "]", nil, "expected a value (a string, number, object, array, true, false or null)"),
            (#"{"a":[1 2]}"#, "2", nil, "expected ',' or ']' after an array element"),
            (#"{"a":{"b" 1}}"#, "1", nil, "expected ':' after a key"),
            (#"{"a":01}"#, "1}", nil, "expected ',' or '}' after a value"),
            (#"{"a":-}"#, "}", nil, "a number needs a digit"),
            (#"{"a":+1}"#, "+1", nil, "expected a value (a string, number, object, array, true, false or null)"),
            (#"{"a":.5}"#, ".5", nil, "expected a value (a string, number, object, array, true, false or null)"),
            (#"{"a":1.}"#, "}", nil, "a number needs a digit after '.'"),
            (#"{"a":1e}"#, "}", nil, "a number needs a digit in its exponent"),
            (#"{"a":1e+}"#, "}", nil, "a number needs a digit in its exponent"),
            (#"{"a":True}"#, "True", nil, "expected a value (a string, number, object, array, true, false or null)"),
            (#"{"a":nul}"#, "nul", nil, "expected true, false or null"),
            (#"{"a":NaN}"#, "NaN", nil, "expected a value (a string, number, object, array, true, false or null)"),
            (#"{"services":["SSH",]}"#, "]", "services", "expected a value"),
            (#"{"services":["SSH" "HTTP"]}"#, #""HTTP""#, "services", "expected ',' or ']' after an array element"),
        ]
        for (text, at, key, problem) in cases {
            #expect(parsed(text) == malformed(offset(of: at, in: text), key, problem), "\(text)")
        }
    }

    @Test func duplicateKeys() {
        #expect(parsed(notification(extra: [#""region":"eu-west-1""#])) == .failure(.duplicateKey("region")))
        #expect(parsed(notification(extra: [#""clientAccessToken":"other""#])) == .failure(.duplicateKey(tokenKey)))
        #expect(parsed(notification(extra: [#""services":[]"#])) == .failure(.duplicateKey("services")))
        #expect(parsed(notification(extra: [#""clientMode":1"#])) == .failure(.duplicateKey("clientMode")))
        // Spelt with an escape, it is the same key.
        #expect(parsed(notification(extra: [#""regio\u006e":"eu-west-1""#])) == .failure(.duplicateKey("region")))
    }

    @Test func trailingBytes() {
        for tail in ["x", "{}", ",", "}", "\0", " 1"] {
            let text = example + tail
            let at = example.utf8.count + (tail == " 1" ? 1 : 0)
            #expect(parsed(text) == .failure(.trailingBytes(offset: at)), "\(tail)")
        }
        #expect(parsed(example + " \r\n\t") == .success(expected))
    }

    @Test func services() {
        #expect(parsed(notification(services: "[]")) == .failure(.invalidValue(key: "services", problem: "is empty; a tunnel has 1 to 3 services")))
        #expect(parsed(notification(services: #"["A","B","C","D"]"#))
            == .failure(.invalidValue(key: "services", problem: "lists more than 3 services; a tunnel has 1 to 3")))
        #expect(parsed(notification(services: #"["S H"]"#)) == .failure(.invalidValue(
            key: "services", problem: "has the service id 'S H', but service ids may only contain letters, digits, '_', '-' and ':'")))
        #expect(parsed(notification(services: #"["SSH","caf\u00e9"]"#)) == .failure(.invalidValue(
            key: "services", problem: "has the service id 'caf??', but service ids may only contain letters, digits, '_', '-' and ':'")))
        #expect(parsed(notification(services: #"[""]"#)) == .failure(.invalidValue(
            key: "services", problem: "has a service id of 0 bytes; service ids are 1 to 128")))
        let longest = String(repeating: "a", count: 128)
        #expect(parsed(notification(services: "[\"\(longest)\"]")) == .success(TunnelNotification(
            clientAccessToken: token, clientMode: "destination", region: "us-east-1", services: [longest])))
        #expect(parsed(notification(services: "[\"\(longest)b\"]")) == .failure(.invalidValue(
            key: "services", problem: "has a service id of 129 bytes; service ids are 1 to 128")))
        #expect(parsed(notification(services: #"["SSH","HTTP","SSH"]"#)) == .failure(.invalidValue(
            key: "services", problem: "lists the service id 'SSH' twice")))
    }

    @Test func requiredKeysAndValues() {
        #expect(parsed(notification(token: nil)) == .failure(.missingKey(tokenKey)))
        #expect(parsed(notification(mode: nil)) == .failure(.missingKey("clientMode")))
        #expect(parsed(notification(region: nil)) == .failure(.missingKey("region")))
        #expect(parsed(notification(services: nil)) == .failure(.missingKey("services")))
        #expect(parsed("{}") == .failure(.missingKey(tokenKey)))
        #expect(parsed(notification(token: #""""#)) == .failure(.invalidValue(key: tokenKey, problem: "is empty")))
        let notVisible = "(12 bytes) holds a space, a control character or a non-ASCII character, which the access-token header cannot carry"
        for value in [#""AQGA Secret1""#, #""AQGA\nSecret1""#, #""AQGA\u00e9Secret""#] {
            #expect(parsed(notification(token: value)) == .failure(.invalidValue(key: tokenKey, problem: notVisible)), "\(value)")
        }
        #expect(parsed(notification(mode: #""""#)) == .failure(.invalidValue(key: "clientMode", problem: "must be 1 to 64 bytes, not 0")))
        #expect(parsed(notification(mode: "\"" + String(repeating: "d", count: 65) + "\"")) == .failure(.invalidValue(
            key: "clientMode", problem: "must be 1 to 64 bytes, not 65")))
        #expect(parsed(notification(mode: #""dest ination""#)) == .failure(.invalidValue(
            key: "clientMode", problem: "may only contain letters, digits, '-' and '_'")))
        #expect(parsed(notification(region: #""""#)) == .failure(.invalidValue(key: "region", problem: "is empty")))
        for region in ["US-EAST-1", "us_east_1", "evil.example/x", String(repeating: "a", count: 65)] {
            let shown = region.utf8.count > 64 ? String(repeating: "a", count: 64) + "..." : region
            #expect(parsed(notification(region: "\"" + region + "\"")) == .failure(.invalidValue(
                key: "region", problem: "'" + shown + "' is not a region name like us-east-1 (1 to 64 of a-z, 0-9 and '-')")), "\(region)")
        }
    }

    /// Every error text names the key and the problem, and none shows the token: errors inside
    /// the token's own string included.
    @Test func errorsNeverShowTheToken() {
        let inToken = [#""\#(token)\x""#, #""\#(token)\uDC00""#, #""\#(token)\uD800x""#, #""\#(token) ""#,
                       #""\#(token)\u00e9""#, "\"" + token + "\u{1}\"", "\"" + token]
        var failures: [TunnelNotificationError] = []
        for value in inToken {
            if case .failure(let error) = parsed(notification(token: value)) { failures.append(error) }
            else { Issue.record("\(value) accepted") }
        }
        for text in [notification(extra: [#""clientAccessToken":"\#(token)""#]), notification(mode: "\"" + token + "!\""),
                     notification(services: "[\"" + token + "\", 1]")] {
            if case .failure(let error) = parsed(text) { failures.append(error) }
            else { Issue.record("\(text) accepted") }
        }
        for error in failures {
            #expect(!error.description.contains(secret), "\(error)")
            #expect(error.description.hasPrefix("the tunnel notification") || error.description.hasPrefix("\""), "\(error)")
        }
        #expect(!expected.description.contains(secret))
        #expect(expected.description == "clientMode destination, region us-east-1, services SSH, access token of \(token.utf8.count) bytes")
    }

    @Test func errorTexts() {
        #expect(TunnelNotificationError.tooLong(20_000).description
            == "the tunnel notification has 20000 bytes, more than the 16384 it may have")
        #expect(TunnelNotificationError.malformed(offset: 7, key: "clientAccessToken", problem: "x").description
            == "the tunnel notification is not valid JSON at byte 7 in the value of \"clientAccessToken\": x")
        #expect(TunnelNotificationError.missingKey("region").description == "the tunnel notification has no \"region\"")
        #expect(TunnelNotificationError.wrongType(key: "services", expected: "an array of strings", found: "a string").description
            == "\"services\" of the tunnel notification must be an array of strings, not a string")
        #expect(TunnelNotificationError.invalidValue(key: "clientAccessToken", problem: "is empty").description
            == "\"clientAccessToken\" of the tunnel notification is empty")
    }

    @Test func namesSharedWithTheConfiguration() {
        #expect(isValidRegionName("us-east-1") && isValidRegionName("cn-north-1") && isValidRegionName("us-gov-west-1"))
        #expect(!isValidRegionName("") && !isValidRegionName("Us-east-1") && !isValidRegionName(String(repeating: "a", count: 65)))
        let allowed = (0...255).filter { isServiceIdByte(UInt8($0)) }.map { UInt8($0) }
        #expect(allowed == Array("-0123456789:ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz".utf8))
    }
}
