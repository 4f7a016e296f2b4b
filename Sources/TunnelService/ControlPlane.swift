/// The control plane's operations (docs/PROTOCOL.md §1) over AWS JSON 1.1: one `POST /` per call,
/// the operation in `X-Amz-Target`, members checked against the service model's shapes
/// (botocore's `iotsecuretunneling/2018-10-05/service-2.json`). HTTP is handled elsewhere; this
/// type maps a request's target, credentials and body to a status, a JSON body and the effects
/// the data plane must carry out.
public final class ControlPlane {
    public static let targetPrefix = "IoTSecuredTunneling."
    public static let contentType = "application/x-amz-json-1.1"

    public struct Response: Equatable {
        public var status: Int
        public var body: JSONValue
        public var effects: [ServiceEffect]

        /// The error type for logs and tests; nil on success.
        public var errorType: String? {
            guard status != 200, case .object(let members) = body, case .string(let type)? = members["__type"] else { return nil }
            return type
        }
    }

    let registry: TunnelRegistry
    /// When set, only SigV4 requests signed with this access key id are served.
    let requiredAccessKeyId: String?

    public init(registry: TunnelRegistry, requiredAccessKeyId: String?) {
        self.registry = registry
        self.requiredAccessKeyId = requiredAccessKeyId
    }

    public func handle(target: String?, authorization: String?, body: [UInt8], now: Double) -> Response {
        do throws(ServiceError) {
            try authorize(authorization)
            guard let target, target.hasPrefix(ControlPlane.targetPrefix) else {
                throw ServiceError("UnknownOperationException", "The X-Amz-Target header must name an IoTSecuredTunneling operation.")
            }
            let operation = String(target.dropFirst(ControlPlane.targetPrefix.count))
            let input = try JSONInput(body.isEmpty ? .object([:]) : JSONValue.parse(body))
            let (output, effects) = try dispatch(operation, input, now: now)
            return Response(status: 200, body: .object(output), effects: effects)
        } catch {
            return Response(status: error.status,
                            body: .object(["__type": .string(error.type), "message": .string(error.message)]), effects: [])
        }
    }

    /// Signatures are not verified (any secret works), but with `--require-access-key-id` the
    /// key id in `Credential=KEY/date/region/service/aws4_request` must match.
    private func authorize(_ authorization: String?) throws(ServiceError) {
        guard let required = requiredAccessKeyId else { return }
        guard let authorization else {
            throw ServiceError("MissingAuthenticationTokenException", "Missing Authentication Token", status: 403)
        }
        guard ControlPlane.accessKeyId(fromAuthorization: authorization) == required else {
            throw ServiceError("UnrecognizedClientException", "The security token included in the request is invalid.", status: 403)
        }
    }

    /// The access key id of a SigV4 Authorization header, if it has one.
    public static func accessKeyId(fromAuthorization header: String) -> String? {
        guard let range = header.range(of: "Credential=") else { return nil }
        let rest = header[range.upperBound...]
        let end = rest.firstIndex { $0 == "/" || $0 == "," || $0 == " " } ?? rest.endIndex
        let key = rest[..<end]
        return key.isEmpty ? nil : String(key)
    }

    private func dispatch(_ operation: String, _ input: JSONInput, now: Double) throws(ServiceError) -> ([String: JSONValue], [ServiceEffect]) {
        switch operation {
        case "OpenTunnel": return try openTunnel(input, now: now)
        case "DescribeTunnel": return (try describeTunnel(input), [])
        case "ListTunnels": return (try listTunnels(input), [])
        case "RotateTunnelAccessToken": return try rotate(input, now: now)
        case "CloseTunnel": return ([:], try closeTunnel(input, now: now))
        case "TagResource":
            try registry.tag(resourceArn: try Shapes.resourceArn(input), tags: try Shapes.tags(input.array("tags", required: true)!, member: "tags"), now: now)
            return ([:], [])
        case "UntagResource":
            let keys = try Shapes.tagKeys(input.array("tagKeys", required: true)!)
            try registry.untag(resourceArn: try Shapes.resourceArn(input), keys: keys, now: now)
            return ([:], [])
        case "ListTagsForResource":
            let tags = try registry.tags(resourceArn: try Shapes.resourceArn(input))
            return (["tags": .array(tags.map(Shapes.json))], [])
        default:
            throw ServiceError("UnknownOperationException", "Unknown operation \(operation).")
        }
    }

    private func openTunnel(_ input: JSONInput, now: Double) throws(ServiceError) -> ([String: JSONValue], [ServiceEffect]) {
        let description = try input.string("description")
        if let description { try Shapes.checkDescription(description) }
        var tags: [Tag] = []
        if let list = try input.array("tags") { tags = try Shapes.tags(list, member: "tags") }
        let destination = try Shapes.destinationConfig(input.object("destinationConfig"))
        var lifetime: Int? = nil
        if let timeout = try input.object("timeoutConfig") {
            lifetime = try timeout.integer("maxLifetimeTimeoutMinutes")
            if let minutes = lifetime, !(1...720).contains(minutes) {
                throw .validation("1 validation error detected: Value '\(minutes)' at 'timeoutConfig.maxLifetimeTimeoutMinutes' failed to satisfy constraint: Member must have value between 1 and 720")
            }
        }
        let opened = try registry.open(description: description, tags: tags, destinationConfig: destination,
                                       lifetimeMinutes: lifetime, now: now)
        let output: [String: JSONValue] = [
            "tunnelId": .string(opened.tunnel.tunnelId), "tunnelArn": .string(opened.tunnel.tunnelArn),
            "sourceAccessToken": .string(opened.sourceAccessToken),
            "destinationAccessToken": .string(opened.destinationAccessToken)]
        return (output, Self.notification(opened.tunnel.destinationConfig, token: opened.destinationAccessToken))
    }

    /// The MQTT notification the service sends the destination when the tunnel names a thing.
    static func notification(_ config: DestinationConfig?, token: String?) -> [ServiceEffect] {
        guard let config, let thing = config.thingName, let token else { return [] }
        return [.notifyDestination(thingName: thing, accessToken: token, services: config.services)]
    }

    private func describeTunnel(_ input: JSONInput) throws(ServiceError) -> [String: JSONValue] {
        let record = try registry.describe(try Shapes.tunnelId(input))
        return ["tunnel": Shapes.json(record)]
    }

    private func listTunnels(_ input: JSONInput) throws(ServiceError) -> [String: JSONValue] {
        let thingName = try input.string("thingName")
        if let thingName { try Shapes.checkName(thingName, member: "thingName") }
        let maxResults = try input.integer("maxResults") ?? 100
        guard (1...100).contains(maxResults) else {
            throw .validation("1 validation error detected: Value '\(maxResults)' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and 100")
        }
        var after: Int? = nil
        if let token = try input.string("nextToken") {
            guard let sequence = Shapes.sequence(fromNextToken: token) else { throw .validation("The nextToken is not valid.") }
            after = sequence
        }
        let (page, nextAfter) = registry.list(thingName: thingName, maxResults: maxResults, after: after)
        var output: [String: JSONValue] = ["tunnelSummaries": .array(page.map(Shapes.summary))]
        if let nextAfter { output["nextToken"] = .string(Shapes.nextToken(after: nextAfter)) }
        return output
    }

    private func rotate(_ input: JSONInput, now: Double) throws(ServiceError) -> ([String: JSONValue], [ServiceEffect]) {
        let tunnelId = try Shapes.tunnelId(input)
        let mode = try input.string("clientMode", required: true)!
        let sides: [Side]
        switch mode {
        case "SOURCE": sides = [.source]
        case "DESTINATION": sides = [.destination]
        case "ALL": sides = [.source, .destination]
        default:
            throw .validation("1 validation error detected: Value '\(mode)' at 'clientMode' failed to satisfy constraint: Member must satisfy enum value set: [SOURCE, DESTINATION, ALL]")
        }
        let destination = try Shapes.destinationConfig(input.object("destinationConfig"))
        let rotated = try registry.rotate(tunnelId, sides: sides, destinationConfig: destination, now: now)
        var output: [String: JSONValue] = ["tunnelArn": .string(rotated.tunnelArn)]
        if let token = rotated.tokens[.source] { output["sourceAccessToken"] = .string(token) }
        if let token = rotated.tokens[.destination] { output["destinationAccessToken"] = .string(token) }
        // After the old connection is closed: the new token goes to the thing, as on opening.
        let config = try registry.describe(tunnelId).destinationConfig
        return (output, rotated.effects + Self.notification(config, token: rotated.tokens[.destination]))
    }

    private func closeTunnel(_ input: JSONInput, now: Double) throws(ServiceError) -> [ServiceEffect] {
        let tunnelId = try Shapes.tunnelId(input)
        let delete = try input.bool("delete") ?? false
        return try registry.close(tunnelId, delete: delete, now: now)
    }
}

/// The model's shapes: constraints on input, and how records are written out.
enum Shapes {
    static func tunnelId(_ input: JSONInput) throws(ServiceError) -> String {
        let id = try input.string("tunnelId", required: true)!
        guard (1...128).contains(id.utf16.count), id.unicodeScalars.allSatisfy(isTunnelIdCharacter) else {
            throw .validation("1 validation error detected: Value '\(bounded(id))' at 'tunnelId' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_\\-+=:]{1,128}")
        }
        return id
    }

    static func resourceArn(_ input: JSONInput) throws(ServiceError) -> String {
        let arn = try input.string("resourceArn", required: true)!
        guard (1...1011).contains(arn.utf16.count) else {
            throw .validation("1 validation error detected: Value at 'resourceArn' failed to satisfy constraint: Member must have length between 1 and 1011")
        }
        return arn
    }

    static func checkDescription(_ text: String) throws(ServiceError) {
        guard (1...2048).contains(text.utf16.count), !text.unicodeScalars.contains(where: isOtherCategory) else {
            throw .validation("1 validation error detected: Value at 'description' failed to satisfy constraint: Member must satisfy regular expression pattern: [^\\p{C}]{1,2048}")
        }
    }

    /// ThingName and Service: `[a-zA-Z0-9:_-]+`, 1 to 128 characters.
    static func checkName(_ text: String, member: String) throws(ServiceError) {
        guard (1...128).contains(text.utf16.count), text.unicodeScalars.allSatisfy(isNameCharacter) else {
            throw .validation("1 validation error detected: Value '\(bounded(text))' at '\(member)' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9:_-]+ with length between 1 and 128")
        }
    }

    static func destinationConfig(_ input: JSONInput?) throws(ServiceError) -> DestinationConfig? {
        guard let input else { return nil }
        let thingName = try input.string("thingName")
        if let thingName { try checkName(thingName, member: "destinationConfig.thingName") }
        let list = try input.array("services", required: true)!
        guard !list.isEmpty else {
            throw .validation("1 validation error detected: Value '[]' at 'destinationConfig.services' failed to satisfy constraint: Member must have length greater than or equal to 1")
        }
        var services: [String] = []
        for item in list {
            guard case .string(let service) = item else { throw .serialization("Member destinationConfig.services must be a list of strings.") }
            try checkName(service, member: "destinationConfig.services")
            guard !services.contains(service) else { throw .validation("Service \(service) is listed more than once.") }
            services.append(service)
        }
        // The model sets no maximum; the service's quota is 3 services per tunnel.
        guard services.count <= 3 else {
            throw .limitExceeded("A tunnel can have at most 3 services; \(services.count) were given.")
        }
        return DestinationConfig(thingName: thingName, services: services)
    }

    static func tags(_ list: [JSONValue], member: String) throws(ServiceError) -> [Tag] {
        guard (1...200).contains(list.count) else {
            throw .validation("1 validation error detected: Value at '\(member)' failed to satisfy constraint: Member must have length between 1 and 200")
        }
        var tags: [Tag] = []
        for item in list {
            guard case .object(let members) = item else { throw .serialization("Member \(member) must be a list of tags.") }
            let tag = JSONInput(members: members)
            let key = try tag.string("key", required: true)!
            let value = try tag.string("value", required: true)!
            guard (1...128).contains(key.utf16.count), key.unicodeScalars.allSatisfy(isTagCharacter) else {
                throw .validation("1 validation error detected: Value '\(bounded(key))' at '\(member).member.key' failed to satisfy constraint: Member must satisfy regular expression pattern: ^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$ with length between 1 and 128")
            }
            guard value.utf16.count <= 256, value.unicodeScalars.allSatisfy(isTagCharacter) else {
                throw .validation("1 validation error detected: Value at '\(member).member.value' failed to satisfy constraint: Member must satisfy regular expression pattern: ^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$ with length at most 256")
            }
            tags.append(Tag(key: key, value: value))
        }
        return tags
    }

    static func tagKeys(_ list: [JSONValue]) throws(ServiceError) -> [String] {
        guard list.count <= 200 else {
            throw .validation("1 validation error detected: Value at 'tagKeys' failed to satisfy constraint: Member must have length less than or equal to 200")
        }
        var keys: [String] = []
        for item in list {
            guard case .string(let key) = item else { throw .serialization("Member tagKeys must be a list of strings.") }
            guard (1...128).contains(key.utf16.count), key.unicodeScalars.allSatisfy(isTagCharacter) else {
                throw .validation("1 validation error detected: Value '\(bounded(key))' at 'tagKeys.member' failed to satisfy constraint: Member must satisfy regular expression pattern: ^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$ with length between 1 and 128")
            }
            keys.append(key)
        }
        return keys
    }

    // Page tokens are opaque to clients: "page-" and the creation sequence number in base 36,
    // inside the model's pattern [a-zA-Z0-9_=-]{1,4096}.
    static func nextToken(after sequence: Int) -> String { "page-" + String(sequence, radix: 36) }

    static func sequence(fromNextToken token: String) -> Int? {
        guard token.hasPrefix("page-"), token.count <= 20 else { return nil }
        return Int(token.dropFirst(5), radix: 36)
    }

    // MARK: Output

    static func json(_ tag: Tag) -> JSONValue { .object(["key": .string(tag.key), "value": .string(tag.value)]) }

    static func json(_ record: TunnelRecord) -> JSONValue {
        var tunnel: [String: JSONValue] = [
            "tunnelId": .string(record.tunnelId),
            "tunnelArn": .string(record.tunnelArn),
            "status": .string(record.status.rawValue),
            "sourceConnectionState": json(record.sourceConnection),
            "destinationConnectionState": json(record.destinationConnection),
            "timeoutConfig": .object(["maxLifetimeTimeoutMinutes": .number(Double(record.maxLifetimeTimeoutMinutes))]),
            "createdAt": .number(record.createdAt),
            "lastUpdatedAt": .number(record.lastUpdatedAt),
        ]
        if let description = record.description { tunnel["description"] = .string(description) }
        if let config = record.destinationConfig {
            var members: [String: JSONValue] = ["services": .array(config.services.map { .string($0) })]
            if let thing = config.thingName { members["thingName"] = .string(thing) }
            tunnel["destinationConfig"] = .object(members)
        }
        if !record.tags.isEmpty { tunnel["tags"] = .array(record.tags.map(json)) }
        return .object(tunnel)
    }

    static func json(_ state: ConnectionState) -> JSONValue {
        .object(["status": .string(state.connected ? "CONNECTED" : "DISCONNECTED"), "lastUpdatedAt": .number(state.lastUpdatedAt)])
    }

    static func summary(_ record: TunnelRecord) -> JSONValue {
        var members: [String: JSONValue] = [
            "tunnelId": .string(record.tunnelId), "tunnelArn": .string(record.tunnelArn),
            "status": .string(record.status.rawValue), "createdAt": .number(record.createdAt),
            "lastUpdatedAt": .number(record.lastUpdatedAt),
        ]
        if let description = record.description { members["description"] = .string(description) }
        return .object(members)
    }

    // MARK: Character classes of the model's patterns

    static func isTunnelIdCharacter(_ s: Unicode.Scalar) -> Bool {
        isASCIIAlphanumeric(s) || "_-+=:".unicodeScalars.contains(s)
    }

    static func isNameCharacter(_ s: Unicode.Scalar) -> Bool {
        isASCIIAlphanumeric(s) || ":_-".unicodeScalars.contains(s)
    }

    static func isASCIIAlphanumeric(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
        default: return false
        }
    }

    /// `[\p{L}\p{Z}\p{N}_.:/=+\-@]`
    static func isTagCharacter(_ s: Unicode.Scalar) -> Bool {
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter,
             .spaceSeparator, .lineSeparator, .paragraphSeparator,
             .decimalNumber, .letterNumber, .otherNumber:
            return true
        default:
            return "_.:/=+-@".unicodeScalars.contains(s)
        }
    }

    /// `\p{C}`: control, format, surrogate, private use, unassigned.
    static func isOtherCategory(_ s: Unicode.Scalar) -> Bool {
        switch s.properties.generalCategory {
        case .control, .format, .surrogate, .privateUse, .unassigned: return true
        default: return false
        }
    }

    /// A value quoted in an error message, bounded so a huge input does not make a huge answer.
    static func bounded(_ text: String) -> String {
        text.count > 64 ? String(text.prefix(64)) + "..." : text
    }
}
