// readSmallFile: the one reader behind configuration, token and resolver files.
import Foundation
import Testing
@testable import TunnelIO

@Suite struct SmallFileTests {
    private func file(_ bytes: [UInt8]) throws -> String {
        let path = NSTemporaryDirectory() + "lp-small-file-\(UUID().uuidString)"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test("Sizes around the limit", arguments: [0, 1, 9, 10, 11, 40_000])
    func sizesAroundTheLimit(_ size: Int) throws {
        let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let path = try file(bytes)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (read, complete) = try readSmallFile(path, limit: 10)
        #expect(complete == (size <= 10))
        #expect(read == Array(bytes.prefix(10)))
        let (whole, wholeComplete) = try readSmallFile(path, limit: 1 << 20)
        #expect(wholeComplete && whole == bytes)
    }

    @Test func missingFileNamesTheStep() {
        #expect(throws: UVError.self) { _ = try readSmallFile("/nonexistent/lp-small-file", limit: 10) }
        do {
            _ = try readSmallFile("/nonexistent/lp-small-file", limit: 10)
        } catch {
            #expect(error.description.contains("opening"), "\(error)")
        }
    }

    @Test func resolverFilesKeepWholeLinesAtTheLimit() throws {
        let path = try file(Array("nameserver 10.0.0.1\nnameserver 10.0.0.2\n".utf8))
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(readResolverFile(path, limit: 25) == Array("nameserver 10.0.0.1\n".utf8))
        #expect(readResolverFile(path, limit: 40) == Array("nameserver 10.0.0.1\nnameserver 10.0.0.2\n".utf8))
        #expect(readResolverFile("/nonexistent/lp-resolv.conf", limit: 40) == nil)
    }
}

// fileModeAndOwner and regularFiles: what the proxy checks of a token file, and the files of
// --config-dir.
@Suite struct FileStatusTests {
    private func directory() throws -> String {
        let path = NSTemporaryDirectory() + "lp-files-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        return path
    }

    @Test func modeAndOwnerOfAFileAndOfALinkToIt() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data([1]).write(to: URL(fileURLWithPath: dir + "/token"))
        #expect(chmod(dir + "/token", 0o640) == 0)
        try FileManager.default.createSymbolicLink(atPath: dir + "/link", withDestinationPath: dir + "/token")
        let file = try #require(fileModeAndOwner(dir + "/token", followingLinks: false))
        #expect(file.mode == 0o100640 && file.owner == UInt32(geteuid()))
        #expect(fileModeAndOwner(dir + "/link", followingLinks: true)?.mode == 0o100640)
        #expect(fileModeAndOwner(dir + "/link", followingLinks: false).map { $0.mode & 0o170000 } == 0o120000)
        #expect(fileModeAndOwner(dir + "/missing", followingLinks: true) == nil)
    }

    @Test func regularFilesRecursivelyInByteOrder() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/b.d", withIntermediateDirectories: false)
        for name in ["b", "a", "B", "b.d/x"] { try Data().write(to: URL(fileURLWithPath: dir + "/" + name)) }
        try FileManager.default.createSymbolicLink(atPath: dir + "/link", withDestinationPath: dir + "/a")
        #expect(regularFiles(under: dir) == [dir + "/B", dir + "/a", dir + "/b", dir + "/b.d/x"])
        #expect(regularFiles(under: dir + "/") == [dir + "/B", dir + "/a", dir + "/b", dir + "/b.d/x"])
        #expect(regularFiles(under: dir + "/missing").isEmpty)
    }
}
