import CLibUV
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
        if out.last == "" { out.removeLast() }
        return Array(out.dropFirst())
    }

    public static func environment(_ name: String) -> String? {
        guard let value = withCString(name, { getenv($0) }) else { return nil }
        return cString(value)
    }

    /// Reads a whole file of at most `limit` bytes, with libuv's synchronous file calls.
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

    /// Permission bits of a file, or nil if it cannot be examined.
    public static func permissions(_ path: String) -> UInt32? {
        var request = uv_fs_t()
        let status = withCString(path) { uv_fs_stat(nil, &request, $0, nil) }
        defer { uv_fs_req_cleanup(&request) }
        guard status == 0 else { return nil }
        return UInt32(truncatingIfNeeded: request.statbuf.st_mode) & 0o7777
    }

    /// Regular files under `directory`, recursively, sorted by path.
    public static func files(under directory: String, depth: Int = 0) -> [String] {
        guard depth < 8 else { return [] }
        var request = uv_fs_t()
        let count = withCString(directory) { uv_fs_scandir(nil, &request, $0, 0, nil) }
        defer { uv_fs_req_cleanup(&request) }
        guard count >= 0 else { return [] }
        var out: [String] = []
        var entry = uv_dirent_t()
        while uv_fs_scandir_next(&request, &entry) == 0 {
            let name = cString(entry.name)
            let path = directory.hasSuffix("/") ? directory + name : directory + "/" + name
            switch entry.type {
            case UV_DIRENT_FILE: out.append(path)
            case UV_DIRENT_DIR: out.append(contentsOf: files(under: path, depth: depth + 1))
            default: continue
            }
        }
        return out.sorted { a, b in Array(a.utf8).lexicographicallyPrecedes(Array(b.utf8)) }
    }
}

public struct FileError: Error, CustomStringConvertible {
    public let path: String
    public let problem: String
    public var description: String { "\(path): \(problem)" }
}
