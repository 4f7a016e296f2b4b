/// Why a session must end.
public enum SessionEndReason: Equatable, CustomStringConvertible {
    /// The tunnel's services do not match the local configuration; retrying will not help.
    case serviceMismatch(missing: [String], tunnel: [String])
    /// The peer sent a message type we do not know without marking it ignorable.
    case unknownMessageType(Int32)
    /// Source mode: the tunnel's services and the `-s` ports cannot be matched up.
    case sourceServiceMismatch(mapped: [String], tunnel: [String])

    public var description: String {
        switch self {
        case .serviceMismatch(let missing, let tunnel):
            return "the tunnel's services [\(list(tunnel))] include [\(list(missing))], which -d/--destination-app does not map: add SERVICE=ENDPOINT for each (e.g. -d \(missing.first ?? "SSH")=22)"
        case .sourceServiceMismatch(let mapped, let tunnel):
            if tunnel.isEmpty {
                return "the tunnel has no named services but -s/--source-listen-port maps [\(list(mapped))]: give a single port, e.g. -s 5555"
            }
            return "the tunnel has services [\(list(tunnel))] but -s/--source-listen-port gives one unnamed port: name a port for each, e.g. -s \(tunnel[0])=5555"
        case .unknownMessageType(let type):
            return "the peer sent message type \(type), which this proxy does not know and which is not marked ignorable"
        }
    }
}

private func list(_ items: [String]) -> String {
    var out = ""
    for (i, s) in items.enumerated() {
        if i > 0 { out += ", " }
        out += s
    }
    return out
}
