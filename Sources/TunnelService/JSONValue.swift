import Foundation

/// A JSON document as a plain enum. Parsing goes through Foundation's JSONSerialization (robust
/// and bounded by the request size limit); the conversion below keeps booleans and numbers apart,
/// which Foundation's bridged NSNumber does not, so that `"delete": 1` is refused like the
/// service refuses it. Output is written here, with sorted keys, so responses are deterministic.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public static func parse(_ bytes: [UInt8]) throws(ServiceError) -> JSONValue {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])
        } catch {
            throw .serialization("The request body is not valid JSON.")
        }
        return convert(object)
    }

    private static func convert(_ value: Any) -> JSONValue {
        switch value {
        case let string as String:
            return .string(string)
        case let number as NSNumber:
            // JSON booleans come back as NSNumbers of type char; numbers as int, long or double.
            if String(cString: number.objCType) == "c" { return .bool(number.boolValue) }
            return .number(number.doubleValue)
        case let array as [Any]:
            return .array(array.map(convert))
        case let object as [String: Any]:
            return .object(object.mapValues(convert))
        default:
            return .null
        }
    }

    public var serialized: String {
        var out = ""
        write(into: &out)
        return out
    }

    private func write(into out: inout String) {
        switch self {
        case .null:
            out += "null"
        case .bool(let b):
            out += b ? "true" : "false"
        case .number(let n):
            if n.isFinite && n == n.rounded() && abs(n) < 1e15 {
                out += String(Int64(n))
            } else if n.isFinite {
                out += "\(n)"
            } else {
                out += "null"
            }
        case .string(let s):
            JSONValue.writeString(s, into: &out)
        case .array(let items):
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                item.write(into: &out)
            }
            out += "]"
        case .object(let members):
            out += "{"
            for (i, key) in members.keys.sorted().enumerated() {
                if i > 0 { out += "," }
                JSONValue.writeString(key, into: &out)
                out += ":"
                members[key]!.write(into: &out)
            }
            out += "}"
        }
    }

    private static func writeString(_ s: String, into out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }
}

/// Reads the members of a request object with the service model's constraints. A missing
/// required member or a broken constraint is a ValidationException; a member of the wrong JSON
/// type is a SerializationException, as in AWS JSON services.
struct JSONInput {
    let members: [String: JSONValue]

    init(_ value: JSONValue) throws(ServiceError) {
        guard case .object(let members) = value else { throw .serialization("The request body must be a JSON object.") }
        self.members = members
    }

    init(members: [String: JSONValue]) { self.members = members }

    /// Present and not null.
    private func value(_ name: String) -> JSONValue? {
        guard let v = members[name] else { return nil }
        if case .null = v { return nil }
        return v
    }

    func string(_ name: String, required: Bool = false) throws(ServiceError) -> String? {
        guard let v = value(name) else {
            if required { throw .validation("1 validation error detected: Value null at '\(name)' failed to satisfy constraint: Member must not be null") }
            return nil
        }
        guard case .string(let s) = v else { throw .serialization("Member \(name) must be a string.") }
        return s
    }

    func integer(_ name: String) throws(ServiceError) -> Int? {
        guard let v = value(name) else { return nil }
        guard case .number(let n) = v, n == n.rounded(), abs(n) < 1e15 else {
            throw .serialization("Member \(name) must be an integer.")
        }
        return Int(n)
    }

    func bool(_ name: String) throws(ServiceError) -> Bool? {
        guard let v = value(name) else { return nil }
        guard case .bool(let b) = v else { throw .serialization("Member \(name) must be a boolean.") }
        return b
    }

    func array(_ name: String, required: Bool = false) throws(ServiceError) -> [JSONValue]? {
        guard let v = value(name) else {
            if required { throw .validation("1 validation error detected: Value null at '\(name)' failed to satisfy constraint: Member must not be null") }
            return nil
        }
        guard case .array(let items) = v else { throw .serialization("Member \(name) must be a list.") }
        return items
    }

    func object(_ name: String) throws(ServiceError) -> JSONInput? {
        guard let v = value(name) else { return nil }
        guard case .object(let members) = v else { throw .serialization("Member \(name) must be a structure.") }
        return JSONInput(members: members)
    }
}
