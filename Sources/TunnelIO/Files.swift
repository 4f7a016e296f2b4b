import CLibUV
import TunnelCore

// The file operations of the program (configuration, token and resolver files, the
// configuration directory), with libuv's synchronous calls: no loop is needed, and the callers
// outside TunnelIO never touch libuv.

/// Reads a small file (configuration, token, resolver files) with libuv's synchronous calls:
/// at most `limit` bytes are returned, and `complete` says whether that was the whole file.
/// Errors name the step (opening or reading) and libuv's reason.
public func readSmallFile(_ path: String, limit: Int) throws(UVError) -> (bytes: [UInt8], complete: Bool) {
    var request = uv_fs_t()
    let fd = withCString(path) { uv_fs_open(nil, &request, $0, O_RDONLY, 0, nil) }
    uv_fs_req_cleanup(&request)
    if fd < 0 { throw UVError(fd, "opening") }
    defer {
        var closeRequest = uv_fs_t()
        uv_fs_close(nil, &closeRequest, uv_file(fd), nil)
        uv_fs_req_cleanup(&closeRequest)
    }
    var data: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16 * 1024)
    // One byte past the limit is enough to tell a file of exactly `limit` bytes from a longer one.
    while data.count <= limit {
        let wanted = min(chunk.count, limit + 1 - data.count)
        let n = chunk.withUnsafeMutableBytes { raw -> Int32 in
            var buffer = uv_buf_init(raw.baseAddress!.assumingMemoryBound(to: CChar.self), UInt32(wanted))
            var readRequest = uv_fs_t()
            let result = uv_fs_read(nil, &readRequest, uv_file(fd), &buffer, 1, -1, nil)
            uv_fs_req_cleanup(&readRequest)
            return result
        }
        if n < 0 { throw UVError(n, "reading") }
        if n == 0 { return (data, true) }
        data += chunk[0..<Int(n)]
    }
    data.removeSubrange(limit...)
    return (data, false)
}

/// The mode (file type and permission bits) and owner of `path`, of the symbolic link itself
/// when `followingLinks` is false; nil if it cannot be examined.
public func fileModeAndOwner(_ path: String, followingLinks: Bool) -> (mode: UInt32, owner: UInt32)? {
    var request = uv_fs_t()
    let status = withCString(path) { followingLinks ? uv_fs_stat(nil, &request, $0, nil) : uv_fs_lstat(nil, &request, $0, nil) }
    defer { uv_fs_req_cleanup(&request) }
    guard status == 0 else { return nil }
    return (UInt32(truncatingIfNeeded: request.statbuf.st_mode), UInt32(truncatingIfNeeded: request.statbuf.st_uid))
}

/// Regular files under `directory`, recursively (at most 8 directories deep), sorted by path.
/// Symbolic links, sockets and devices are left out; an unreadable directory gives nothing.
public func regularFiles(under directory: String, depth: Int = 0) -> [String] {
    guard depth < 8 else { return [] }
    var request = uv_fs_t()
    let count = withCString(directory) { uv_fs_scandir(nil, &request, $0, 0, nil) }
    defer { uv_fs_req_cleanup(&request) }
    guard count >= 0 else { return [] }
    var out: [String] = []
    var entry = uv_dirent_t()
    while uv_fs_scandir_next(&request, &entry) == 0 {
        let name = cString(entry.name)
        let path = directory.hasByteSuffix("/") ? directory + name : directory + "/" + name
        switch entry.type {
        case UV_DIRENT_FILE: out.append(path)
        case UV_DIRENT_DIR: out.append(contentsOf: regularFiles(under: path, depth: depth + 1))
        default: continue
        }
    }
    return out.sorted { a, b in Array(a.utf8).lexicographicallyPrecedes(Array(b.utf8)) }
}
