/// The two files a stub resolver reads, parsed from their bytes (the I/O layer reads them):
/// /etc/hosts (hosts(5)) and /etc/resolv.conf (resolv.conf(5)), the parts of them that glibc's
/// resolver uses for a plain A/AAAA lookup.

/// Lines longer than this are ignored rather than parsed in part (glibc's own limits are of this
/// order; real files stay far below it).
public let resolverFileMaximumLineLength = 4096

/// Splits `content` into lines (LF, with a CR before it dropped) and the fields of each line,
/// separated by spaces and tabs, with everything from `comment` on removed. Over-long lines
/// come back as nil.
private func fieldLines(_ content: [UInt8], comments: [UInt8]) -> [[ArraySlice<UInt8>]?] {
    var out: [[ArraySlice<UInt8>]?] = []
    for var line in content.split(separator: 0x0A, omittingEmptySubsequences: false) {
        if line.count > resolverFileMaximumLineLength {
            out.append(nil)
            continue
        }
        if let c = line.firstIndex(where: { comments.contains($0) }) { line = line[..<c] }
        out.append(line.split(whereSeparator: { $0 == 0x20 || $0 == 0x09 || $0 == 0x0D || $0 == 0x0B || $0 == 0x0C }))
    }
    return out
}

private func lowercased(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
    bytes.map { $0 >= 0x41 && $0 <= 0x5A ? $0 + 0x20 : $0 }
}

/// /etc/hosts: `ADDRESS NAME [ALIAS...]` per line, `#` comments, blank lines.
public struct HostsFile: Equatable, Sendable {
    public struct Entry: Equatable, Sendable {
        public let address: IPAddress
        /// The canonical name and aliases, lower-cased, without a final dot.
        public let names: [[UInt8]]
    }

    public private(set) var entries: [Entry] = []
    /// Numbers (from 1) of the lines that were not blank or comments but could not be used: an
    /// address that does not parse, no name after the address, or a line over the length limit.
    public private(set) var ignoredLines: [Int] = []

    public init(parsing content: [UInt8]) {
        for (index, fields) in fieldLines(content, comments: [0x23]).enumerated() {
            guard let fields else {
                ignoredLines.append(index + 1)
                continue
            }
            if fields.isEmpty { continue }
            guard fields.count >= 2, let address = IPAddress(text: fields[0]) else {
                ignoredLines.append(index + 1)
                continue
            }
            var names: [[UInt8]] = []
            for field in fields.dropFirst() {
                var name = lowercased(field)
                if name.count > 1 && name.last == 0x2E { name.removeLast() }
                if name.count <= DNSName.maximumTextLength { names.append(name) }
            }
            if names.isEmpty {
                ignoredLines.append(index + 1)
                continue
            }
            entries.append(Entry(address: address, names: names))
        }
    }

    /// Every address listed for `name` (case-insensitive; a final dot is ignored): IPv4 ones
    /// first, then IPv6, each in file order, without repeats.
    public func addresses(for name: String) -> [IPAddress] {
        var key = lowercased(Array(name.utf8)[...])
        if key.count > 1 && key.last == 0x2E { key.removeLast() }
        var v4: [IPAddress] = []
        var v6: [IPAddress] = []
        for entry in entries where entry.names.contains(key) {
            if entry.address.family == .v4 {
                if !v4.contains(entry.address) { v4.append(entry.address) }
            } else if !v6.contains(entry.address) {
                v6.append(entry.address)
            }
        }
        return v4 + v6
    }
}

/// /etc/resolv.conf: `nameserver ADDRESS` lines (at most three used, as glibc's MAXNS) and
/// `options` with `timeout:N` and `attempts:N`. Other keywords (`search`, `domain`,
/// `sortlist`...) and other options are ignored. With no usable nameserver line the local
/// host is asked (127.0.0.1), as glibc does.
public struct ResolverConfiguration: Equatable, Sendable {
    public static let maximumNameservers = 3
    public static let defaultTimeoutSeconds = 5
    public static let defaultAttempts = 2
    /// glibc's caps (RES_MAXRETRANS, RES_MAXRETRY).
    public static let maximumTimeoutSeconds = 30
    public static let maximumAttempts = 5

    public private(set) var nameservers: [IPAddress]
    /// Per try, 1...30 s.
    public private(set) var timeoutSeconds = defaultTimeoutSeconds
    /// Rounds through the nameservers, 1...5.
    public private(set) var attempts = defaultAttempts
    /// Numbers (from 1) of `nameserver` and `options` lines that could not be used in full (an
    /// address that does not parse, such as one with a `%zone`; a bad option value; a line over
    /// the length limit).
    public private(set) var ignoredLines: [Int] = []

    /// The configuration of a system without a resolv.conf.
    public init() {
        nameservers = [IPAddress(bytes: [127, 0, 0, 1])!]
    }

    public init(parsing content: [UInt8]) {
        var servers: [IPAddress] = []
        let nameserver = Array("nameserver".utf8)
        let options = Array("options".utf8)
        for (index, fields) in fieldLines(content, comments: [0x23, 0x3B]).enumerated() {
            guard let fields else {
                ignoredLines.append(index + 1)
                continue
            }
            guard let keyword = fields.first else { continue }
            if keyword.elementsEqual(nameserver) {
                guard fields.count >= 2, let address = IPAddress(text: fields[1]) else {
                    ignoredLines.append(index + 1)
                    continue
                }
                if servers.count < ResolverConfiguration.maximumNameservers { servers.append(address) }
            } else if keyword.elementsEqual(options) {
                for option in fields.dropFirst() {
                    if let n = optionValue(option, Array("timeout:".utf8)) {
                        guard let n else {
                            if ignoredLines.last != index + 1 { ignoredLines.append(index + 1) }
                            continue
                        }
                        timeoutSeconds = min(max(n, 1), ResolverConfiguration.maximumTimeoutSeconds)
                    } else if let n = optionValue(option, Array("attempts:".utf8)) {
                        guard let n else {
                            if ignoredLines.last != index + 1 { ignoredLines.append(index + 1) }
                            continue
                        }
                        attempts = min(max(n, 1), ResolverConfiguration.maximumAttempts)
                    }
                }
            }
        }
        nameservers = servers.isEmpty ? ResolverConfiguration().nameservers : servers
    }
}

/// For an option `prefix` (e.g. `timeout:`): nil if `option` is another option; `.some(nil)`
/// if its value is not a decimal number; else the number (large values saturate).
private func optionValue(_ option: ArraySlice<UInt8>, _ prefix: [UInt8]) -> Int?? {
    guard option.starts(with: prefix) else { return nil }
    let digits = option.dropFirst(prefix.count)
    guard !digits.isEmpty else { return .some(nil) }
    var n = 0
    for c in digits {
        guard c >= 0x30 && c <= 0x39 else { return .some(nil) }
        n = min(n * 10 + Int(c - 0x30), 1_000_000)
    }
    return .some(n)
}
