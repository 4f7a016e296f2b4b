import CLibC
import TunnelCore
import TunnelIO

/// The few things the proxy reads from the system, without Foundation (the device binary is
/// Embedded Swift): its command line, environment variables, and small files.
public enum SystemAccess {
    /// Arguments after the program name, from /proc/self/cmdline (Embedded Swift has no
    /// `CommandLine`; this also works under qemu-user).
    public static func arguments() -> [String] {
        guard let data = try? readFile("/proc/self/cmdline", limit: 1 << 20) else { return [] }
        var out: [String] = []
        for part in data.split(separator: 0, omittingEmptySubsequences: false) {
            out.append(String(decoding: part, as: UTF8.self))
        }
        if out.last?.isEmpty == true { out.removeLast() }
        return Array(out.dropFirst())
    }

    public static func environment(_ name: String) -> String? {
        guard let value = withCString(name, { getenv($0) }) else { return nil }
        return cString(value)
    }

    /// Reads a whole file of at most `limit` bytes (TunnelIO's `readSmallFile`).
    public static func readFile(_ path: String, limit: Int = 1 << 20) throws(FileError) -> [UInt8] {
        let result: (bytes: [UInt8], complete: Bool)
        do throws(UVError) {
            result = try readSmallFile(path, limit: limit)
        } catch {
            throw FileError(path: path, problem: error.description)
        }
        guard result.complete else { throw FileError(path: path, problem: "larger than \(limit) bytes") }
        return result.bytes
    }

    /// Mode and owner of a file, following a symbolic link (whose own owner is kept too), or
    /// nil if it cannot be examined.
    public static func status(_ path: String) -> FileStatus? {
        guard let link = fileModeAndOwner(path, followingLinks: false) else { return nil }
        if link.mode & 0o170000 != 0o120000 {
            return FileStatus(mode: link.mode & 0o7777, owner: link.owner, isRegular: link.mode & 0o170000 == 0o100000, linkOwner: nil)
        }
        guard let target = fileModeAndOwner(path, followingLinks: true) else { return nil }
        return FileStatus(mode: target.mode & 0o7777, owner: target.owner, isRegular: target.mode & 0o170000 == 0o100000,
                          linkOwner: link.owner)
    }

    /// The effective user id of this process.
    public static var userId: UInt32 { UInt32(geteuid()) }

    /// Regular files under `directory`, recursively, sorted by path.
    public static func files(under directory: String) -> [String] {
        regularFiles(under: directory)
    }
}

/// What the proxy checks of a file holding a secret before reading it.
public struct FileStatus: Equatable {
    /// Permission bits (of the target, for a symbolic link).
    public var mode: UInt32
    public var owner: UInt32
    public var isRegular: Bool
    /// The owner of the symbolic link itself when `path` is one.
    public var linkOwner: UInt32?

    public init(mode: UInt32, owner: UInt32, isRegular: Bool = true, linkOwner: UInt32? = nil) {
        self.mode = mode
        self.owner = owner
        self.isRegular = isRegular
        self.linkOwner = linkOwner
    }

    /// Why a file holding `what` (an access token) must not be trusted, or nil when it is
    /// private to `user`: a regular file, owned by `user` or root, not readable or writable by
    /// group or others, and reached (if through a symbolic link) by a link owned by `user` or
    /// root (anyone else could point it at a file of their choosing).
    public func problem(path: String, holding what: String, user: UInt32) -> String? {
        if let linkOwner, linkOwner != user && linkOwner != 0 {
            return "\(path) holds \(what) but is a symbolic link owned by uid \(linkOwner), not by this user (uid \(user)) or root: replace the link with the file itself"
        }
        if !isRegular {
            return "\(path) holds \(what) but is not a regular file"
        }
        if owner != user && owner != 0 {
            return "\(path) holds \(what) but is owned by uid \(owner), not by this user (uid \(user)) or root: run chown \(user) \(path)"
        }
        if mode & 0o077 != 0 {
            return "\(path) holds \(what) but can be read or changed by other users (mode \(octal(mode))): run chmod 600 \(path)"
        }
        return nil
    }
}

public struct FileError: Error, CustomStringConvertible {
    public let path: String
    public let problem: String
    public var description: String { "\(path): \(problem)" }
}
