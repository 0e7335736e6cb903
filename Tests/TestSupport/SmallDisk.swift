public import Foundation

/// A small tmpfs mounted in a temporary directory: a disk that can be filled and freed.
public struct SmallDisk: Sendable {
    public let path: String

    public init(megabytes: Int) throws {
        path = try temporaryDirectory("edgefleet-disk")
        let mounted = try run(URL(fileURLWithPath: "/bin/mount"), ["-t", "tmpfs", "-o", "size=\(megabytes)m", "tmpfs", path])
        guard mounted.status == 0 else { throw TestSupportError("cannot mount a tmpfs at \(path) (tests run as root): \(mounted.stderr)") }
    }

    /// Fills what is left with one file.
    public func fill() throws {
        _ = try run(URL(fileURLWithPath: "/bin/sh"), ["-c", "cat /dev/zero > '\(path)/filler' 2>/dev/null; true"])
    }

    public func free() { try? FileManager.default.removeItem(atPath: path + "/filler") }

    public func remove() {
        _ = try? run(URL(fileURLWithPath: "/bin/umount"), ["-l", path])
        try? FileManager.default.removeItem(atPath: path)
    }
}
