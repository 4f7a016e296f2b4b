/// Fuzz target `resolver-files`: the built-in resolver's file parsers (HostsFile and
/// ResolverConfiguration in Sources/TunnelCore/ResolverFiles.swift) and the address text parser
/// they use (IPAddress in IPAddress.swift). The input is the content of /etc/hosts and of
/// /etc/resolv.conf at once.
///
/// Properties checked:
/// - the resolv.conf values stay in their ranges (one to three nameservers, timeout 1-30 s,
///   attempts 1-5) and ignored line numbers are increasing and name real lines;
/// - every hosts entry has names, lower-cased and at most 253 bytes, and looking one of them up
///   finds the entry's address, IPv4 addresses before IPv6 ones, without repeats;
/// - both parsed files, written out again, parse to the same values;
/// - IPAddress accepts exactly the text glibc's inet_pton accepts, with the same bytes, and its
///   printed form parses back to the same address.
import Glibc
@testable import TunnelCore

/// The address inet_pton reads from `text`, as IPv4 or else IPv6 bytes.
func systemAddress(_ text: [UInt8]) -> [UInt8]? {
    guard !text.contains(0) else { return nil }
    let cString = text + [0]
    var out = [UInt8](repeating: 0, count: 16)
    return cString.withUnsafeBytes { raw -> [UInt8]? in
        let p = raw.baseAddress!.assumingMemoryBound(to: CChar.self)
        if out.withUnsafeMutableBytes({ inet_pton(AF_INET, p, $0.baseAddress) }) == 1 { return Array(out[0..<4]) }
        if out.withUnsafeMutableBytes({ inet_pton(AF_INET6, p, $0.baseAddress) }) == 1 { return out }
        return nil
    }
}

func checkAddressText(_ field: ArraySlice<UInt8>) {
    let text = Array(field)
    let ours = IPAddress(text: text)
    let theirs = systemAddress(text)
    require(ours?.bytes == theirs,
            "IPAddress reads '\(String(decoding: text, as: UTF8.self))' as \(ours.map { "\($0)" } ?? "invalid"), inet_pton as \(theirs.map { "\($0)" } ?? "invalid")")
    if let ours {
        require(IPAddress(ours.description) == ours, "\(ours) does not parse back to the same address")
    }
}

func lineCount(_ bytes: [UInt8]) -> Int { bytes.split(separator: 0x0A, omittingEmptySubsequences: false).count }

func checkIgnoredLines(_ lines: [Int], total: Int, _ what: String) {
    for (i, n) in lines.enumerated() {
        require(n >= 1 && n <= total, "\(what): ignored line \(n) of \(total)")
        require(i == 0 || lines[i - 1] < n, "\(what): ignored lines not increasing: \(lines)")
    }
}

func checkHosts(_ bytes: [UInt8]) {
    let hosts = HostsFile(parsing: bytes)
    checkIgnoredLines(hosts.ignoredLines, total: lineCount(bytes), "hosts")
    var rendered: [UInt8] = []
    var renderable = true
    for entry in hosts.entries {
        require(!entry.names.isEmpty, "a hosts entry without names")
        var line = Array(entry.address.description.utf8)
        for name in entry.names {
            require(!name.isEmpty && name.count <= DNSName.maximumTextLength, "a hosts name of \(name.count) bytes")
            require(!name.contains { $0 >= 0x41 && $0 <= 0x5A }, "a hosts name with an upper-case letter")
            // A final dot is dropped once when reading, so one is added for each name written.
            line += [0x20] + name + [0x2E]
            // Looking a name up drops one final dot too, so a name stored with one cannot be found
            // by itself, only with one more dot. Names are looked up as text: one that is not
            // UTF-8 cannot be asked for.
            guard let key = String(validating: name + [0x2E], as: UTF8.self) else { continue }
            let found = hosts.addresses(for: key)
            require(found.contains(entry.address), "looking up a hosts name does not find its address \(entry.address)")
            if let firstV6 = found.firstIndex(where: { $0.family == .v6 }) {
                require(found[firstV6...].allSatisfy { $0.family == .v6 }, "an IPv4 address after an IPv6 one")
            }
            for (i, a) in found.enumerated() { require(!found[..<i].contains(a), "address \(a) repeated") }
        }
        if line.count > resolverFileMaximumLineLength { renderable = false }
        rendered += line + [0x0A]
    }
    guard renderable else { return }
    let again = HostsFile(parsing: rendered)
    require(again.entries == hosts.entries, "hosts entries written out again parse differently")
    require(again.ignoredLines.isEmpty, "hosts entries written out again have ignored lines \(again.ignoredLines)")
}

func checkResolvConf(_ bytes: [UInt8]) {
    let conf = ResolverConfiguration(parsing: bytes)
    require(conf.nameservers.count >= 1 && conf.nameservers.count <= ResolverConfiguration.maximumNameservers,
            "\(conf.nameservers.count) nameservers")
    require(conf.timeoutSeconds >= 1 && conf.timeoutSeconds <= ResolverConfiguration.maximumTimeoutSeconds,
            "timeout \(conf.timeoutSeconds)")
    require(conf.attempts >= 1 && conf.attempts <= ResolverConfiguration.maximumAttempts, "attempts \(conf.attempts)")
    checkIgnoredLines(conf.ignoredLines, total: lineCount(bytes), "resolv.conf")
    var text = ""
    for server in conf.nameservers { text += "nameserver \(server)\n" }
    text += "options timeout:\(conf.timeoutSeconds) attempts:\(conf.attempts)\n"
    let again = ResolverConfiguration(parsing: Array(text.utf8))
    require(again.nameservers == conf.nameservers && again.timeoutSeconds == conf.timeoutSeconds
            && again.attempts == conf.attempts && again.ignoredLines.isEmpty,
            "resolv.conf values written out again parse differently")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = inputBytes(data, size)
    checkHosts(bytes)
    checkResolvConf(bytes)
    var fields = 0
    for line in bytes.split(separator: 0x0A) {
        for field in line.split(whereSeparator: { $0 == 0x20 || $0 == 0x09 }) where field.count <= 64 {
            checkAddressText(field)
            fields += 1
            if fields == 64 { return 0 }
        }
    }
    return 0
}
