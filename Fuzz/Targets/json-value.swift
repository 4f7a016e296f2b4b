/// Fuzz target `json-value`: the emulator's JSON request bodies (JSONValue in
/// Sources/TunnelService/JSONValue.swift): parsing through Foundation, the conversion that keeps
/// booleans and numbers apart, the member accessors of JSONInput, and serialization.
///
/// Properties checked:
/// - booleans stay booleans and numbers stay numbers (checked once, on known text);
/// - a parsed value, serialized, is valid UTF-8 and parses back to the same value (numbers that
///   are not finite are written as null, so they come back as null; other numbers agree to 12
///   digits only, because Foundation reads some numbers, such as integers of more than 19 digits
///   or 17 significant digits with an exponent, through NSDecimalNumber, whose conversion to
///   Double is not always the nearest one, so even the serialized text does not always come back
///   the same);
/// - JSONInput's accessors either return the member or throw, for every member of an object;
/// - the control plane (ControlPlane.handle, over a registry holding one open tunnel, `tunnel-1`)
///   answers the input as the body of each operation with 200 or with a typed error.
///
/// Foundation is not built with coverage, so only the conversion, the accessors and the control
/// plane's own code guide the fuzzer; Fuzz/dict/json-value.dict gives it JSON's tokens and the
/// control plane's member names.
@testable import TunnelService

/// Whether `again` is what `value` must come back as after serialization: non-finite numbers
/// become null, other numbers agree to 12 significant digits, the rest is equal.
func matches(_ again: JSONValue, _ value: JSONValue) -> Bool {
    switch (again, value) {
    case (.null, .number(let n)) where !n.isFinite:
        return true
    case (.number(let a), .number(let b)):
        return a == b || abs(a - b) <= 1e-12 * max(abs(a), abs(b))
    case (.array(let x), .array(let y)):
        return x.count == y.count && zip(x, y).allSatisfy { matches($0, $1) }
    case (.object(let x), .object(let y)):
        return x.count == y.count && x.allSatisfy { key, member in y[key].map { matches(member, $0) } ?? false }
    default:
        return again == value
    }
}

let booleansAndNumbersChecked: Void = {
    let parsed = try? JSONValue.parse(Array(#"[true, false, 1, 0, 1.5, "x", null, {"a": []}]"#.utf8))
    require(parsed == .array([.bool(true), .bool(false), .number(1), .number(0), .number(1.5), .string("x"), .null,
                              .object(["a": .array([])])]),
            "known JSON parses as \(String(describing: parsed))")
}()

func checkAccessors(_ value: JSONValue) {
    guard case .object(let members) = value, let input = try? JSONInput(value) else { return }
    for name in members.keys.prefix(16) {
        _ = try? input.string(name, required: true)
        _ = try? input.integer(name)
        _ = try? input.bool(name)
        _ = try? input.array(name, required: true)
        if let inner = try? input.object(name) { checkAccessors(.object(inner.members)) }
    }
}

let operations = ["OpenTunnel", "DescribeTunnel", "ListTunnels", "RotateTunnelAccessToken", "CloseTunnel",
                  "TagResource", "UntagResource", "ListTagsForResource"]

func checkControlPlane(_ body: [UInt8]) {
    var tokens = 0
    var tunnels = 0
    let registry = TunnelRegistry(region: "us-east-1",
                                  makeToken: { tokens += 1; return "token-\(tokens)" },
                                  makeTunnelId: { tunnels += 1; return "tunnel-\(tunnels)" })
    let plane = ControlPlane(registry: registry, requiredAccessKeyId: nil)
    let now = 1_700_000_000.0
    let opened = plane.handle(target: ControlPlane.targetPrefix + "OpenTunnel", authorization: nil, body: [], now: now)
    require(opened.status == 200, "OpenTunnel with an empty body failed: \(opened.body.serialized)")
    for operation in operations {
        let response = plane.handle(target: ControlPlane.targetPrefix + operation, authorization: nil, body: body, now: now + 1)
        require(response.status == 200 || (response.status >= 400 && response.status <= 599 && response.errorType != nil),
                "\(operation) answered \(response.status) \(response.body.serialized)")
        _ = response.body.serialized
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    _ = booleansAndNumbersChecked
    let bytes = inputBytes(data, size)
    guard let value = try? JSONValue.parse(bytes) else { return 0 }
    let text = value.serialized
    require(String(validating: Array(text.utf8), as: UTF8.self) != nil, "serialized JSON is not UTF-8")
    do throws(ServiceError) {
        let again = try JSONValue.parse(Array(text.utf8))
        require(matches(again, value), "serialized JSON parses to another value: \(text)")
    } catch {
        require(false, "serialized JSON does not parse: \(text)")
    }
    checkAccessors(value)
    checkControlPlane(bytes)
    return 0
}
