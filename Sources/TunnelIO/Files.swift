import CLibUV

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
