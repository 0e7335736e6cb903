public import Foundation
@_exported public import Subprocesses

#if canImport(Glibc)
import Glibc
#endif

/// Runs a command to completion and returns its exit status and output.
@discardableResult
public func run(_ executablePath: URL, _ arguments: [String], environment: [String: String]? = nil) throws
    -> (status: Int32, stdout: String, stderr: String)
{
    let directory = FileManager.default.temporaryDirectory
    let out = directory.appendingPathComponent("edgefleet-run-\(UUID().uuidString).out").path
    let err = directory.appendingPathComponent("edgefleet-run-\(UUID().uuidString).err").path
    defer {
        unlink(out)
        unlink(err)
    }
    let child = try ChildProcess(executablePath.path, arguments, outputPath: out, errorPath: err, environment: environment)
    let status = child.wait()
    let stdout = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
    let stderr = (try? String(contentsOfFile: err, encoding: .utf8)) ?? ""
    return (status, stdout, stderr)
}

/// An executable this package builds (`edgefleet`, `edgefleet-agent`, ...), from
/// the build directory the running test binary lives in.
public func builtProduct(_ name: String) throws -> URL {
    let testBinary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
    var directory = testBinary.deletingLastPathComponent()
    // On Linux the test binary is build/debug/X.xctest; elsewhere it may sit inside a bundle.
    for _ in 0..<4 {
        let candidate = directory.appendingPathComponent(name)
        if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        directory = directory.deletingLastPathComponent()
    }
    throw TestSupportError("\(name) is not built next to \(testBinary.path); run `swift build` first")
}

/// A new empty directory under the system's temporary directory.
public func temporaryDirectory(_ prefix: String = "edgefleet-test") throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Whether `pid` is a zombie (exited, not yet reaped by its parent).
public func isZombie(_ pid: Int32) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
    else { return true }
    return stat[stat.index(close, offsetBy: 2)] == "Z"
}
