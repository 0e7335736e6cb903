public import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Errors of the test helpers, with what went wrong in words.
public struct TestSupportError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The repository root, found from this file's location.
public let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// A real mosquitto on a free loopback port, started from a config in
/// `broker-config/` with the listener port rewritten and keys overridden.
/// Stop it with `stop()` (tests use `defer`); `restart()` brings it back on the same port.
public final class MosquittoBroker: @unchecked Sendable {
    public private(set) var port: Int = 0
    public let directory: URL
    public let configFile: URL
    private var process: ChildProcess?
    /// Write end of the pipe the watchdog shell reads: when this test process
    /// dies, the pipe closes and the watchdog stops mosquitto, so no broker outlives its test run.
    private var lifeline: Int32 = -1
    private let logFile: URL
    /// While mosquitto is stopped, a socket bound (not listening) to its port: clients still find
    /// nothing there, but no other test's broker is given the port by the kernel in between (a
    /// client of this test retrying it would reach that broker).
    private var placeholder: Int32 = -1

    /// Starts mosquitto.
    /// - Parameters:
    ///   - config: path relative to `broker-config/`.
    ///   - overrides: `key → value` lines replacing the config's line with that key
    ///     (or appended); a `nil` value removes the key.
    ///   - extraLines: appended verbatim (extra listeners; `{port}` placeholders
    ///     are replaced by the free ports in `extraPorts`).
    public init(
        config: String = "dev/mosquitto.conf",
        overrides: [(String, String?)] = [],
        extraLines: [String] = []
    ) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("edgefleet-broker-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        self.directory = directory
        self.logFile = directory.appendingPathComponent("mosquitto.log")
        self.configFile = directory.appendingPathComponent("mosquitto.conf")
        let template = try String(contentsOf: repositoryRoot.appendingPathComponent("broker-config").appendingPathComponent(config), encoding: .utf8)
        var lastError: (any Error)?
        for _ in 0..<5 {
            let port = try freeLoopbackPort()
            var lines = template.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            lines = lines.map { line in
                line.hasPrefix("listener ") && line.split(separator: " ").count >= 2 && !line.contains("{port")
                    ? "listener \(port) 127.0.0.1" : line
            }
            var allOverrides = overrides
            if geteuid() == 0 { allOverrides.append(("user", "root")) }
            for (key, value) in allOverrides {
                let index = lines.firstIndex { $0.split(separator: " ").first.map(String.init) == key }
                if let index {
                    if let value { lines[index] = "\(key) \(value)" } else { lines.remove(at: index) }
                } else if let value {
                    lines.append("\(key) \(value)")
                }
            }
            lines.append(contentsOf: extraLines)
            // "running" (information) is how launch() knows every listener is open.
            if !lines.contains("log_type information") && !lines.contains("log_type all") { lines.append("log_type information") }
            try lines.joined(separator: "\n").write(to: configFile, atomically: true, encoding: .utf8)
            do {
                self.port = port
                try launch()
                return
            } catch {
                lastError = error
            }
        }
        throw lastError ?? TestSupportError("mosquitto did not start")
    }

    /// Starts mosquitto from a configuration the test rendered itself (several listeners on
    /// ports it chose, files in `directory`); waits until `port` accepts connections. As root
    /// it adds `user root` (mosquitto would drop to a `mosquitto` user that cannot read the
    /// test's files).
    ///
    /// `asRoot: false` lets mosquitto drop to its `mosquitto` user as it does when installed,
    /// so the test sees whether that user can read the files it is given.
    public init(configText: String, port: Int, directory: URL, asRoot: Bool = true) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        self.directory = directory
        self.logFile = directory.appendingPathComponent("mosquitto.log")
        self.configFile = directory.appendingPathComponent("mosquitto.conf")
        self.port = port
        var text = configText
        if geteuid() == 0 && asRoot { text += "\nuser root\n" }
        if !text.contains("log_type information") && !text.contains("log_type all") { text += "\nlog_type information\n" }
        try text.write(to: configFile, atomically: true, encoding: .utf8)
        try launch()
    }

    /// Sends SIGHUP: mosquitto reads its password file and ACL again.
    public func reload() {
        if let pid = brokerPID { Glibc.kill(pid, SIGHUP) }
    }

    /// The URL clients use: `mqtt://127.0.0.1:PORT`.
    public var url: String { "mqtt://127.0.0.1:\(port)" }

    private var pidFile: String { directory.appendingPathComponent("mosquitto.pid").path }

    private func launch() throws {
        releasePort()
        let mosquitto = try executable("mosquitto", extraDirectories: ["/usr/sbin"])
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw TestSupportError("pipe() failed") }
        // Neither end may leak into another test's children (the lifeline would never close).
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        let script = #"""
            "$0" -c "$1" & p=$!
            echo $p > "$2"
            trap 'kill -TERM $p 2>/dev/null; wait $p; exit 0' TERM
            read -r _ || true
            kill -TERM $p 2>/dev/null
            wait $p
            """#
        let process: ChildProcess
        do {
            process = try ChildProcess("/bin/sh", ["-c", script, mosquitto.path, configFile.path, pidFile], outputPath: logFile.path, stdinFD: fds[0])
        } catch {
            close(fds[0])
            close(fds[1])
            throw error
        }
        close(fds[0])
        self.lifeline = fds[1]
        self.process = process
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if !process.isRunning || (brokerPID.map { Glibc.kill($0, 0) != 0 } ?? false) {
                stop()
                throw TestSupportError("mosquitto exited: \(log)")
            }
            // Listening is not enough: another process may hold the port (it was free a moment
            // ago), and mosquitto opens its listeners one by one. "running" comes after all of them.
            if canConnect(port: port) && log.contains(" running") { return }
            usleep(10_000)
        }
        stop()
        throw TestSupportError("mosquitto did not listen on \(port) within 10 s: \(log)")
    }

    private var brokerPID: pid_t? {
        (try? String(contentsOfFile: pidFile, encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// What mosquitto logged so far.
    public var log: String { (try? String(contentsOf: logFile, encoding: .utf8)) ?? "" }

    /// Stops mosquitto (SIGTERM) and waits for it to exit.
    public func stop() {
        guard let process else { return }
        if lifeline >= 0 {
            close(lifeline)  // the watchdog stops mosquitto and waits for it
            lifeline = -1
        }
        process.wait()
        unlink(pidFile)
        self.process = nil
        holdPort()
    }

    private func holdPort() {
        guard placeholder < 0, port > 0 else { return }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        if bound { placeholder = fd } else { close(fd) }
    }

    private func releasePort() {
        if placeholder >= 0 { close(placeholder) }
        placeholder = -1
    }

    /// Kills mosquitto (SIGKILL): no clean disconnects, no persistence flush.
    public func kill() {
        guard process != nil else { return }
        if let pid = brokerPID { Glibc.kill(pid, SIGKILL) }
        stop()
    }

    /// Starts mosquitto again with the same config and port (off the cooperative pool: the
    /// start polls until mosquitto runs).
    public func restart() async throws {
        try await offload { [self] in
            stop()
            try launch()
        }
    }

    /// Starts mosquitto without holding a cooperative thread while it comes up (see `offload`).
    public static func start(
        config: String = "dev/mosquitto.conf",
        overrides: [(String, String?)] = [],
        extraLines: [String] = []
    ) async throws -> MosquittoBroker {
        try await offload { try MosquittoBroker(config: config, overrides: overrides, extraLines: extraLines) }
    }

    /// `init(configText:port:directory:asRoot:)` off the cooperative pool.
    public static func start(configText: String, port: Int, directory: URL, asRoot: Bool = true) async throws -> MosquittoBroker {
        try await offload { try MosquittoBroker(configText: configText, port: port, directory: directory, asRoot: asRoot) }
    }

    deinit {
        stop()
        releasePort()
        try? FileManager.default.removeItem(at: directory)
    }
}

/// A TCP socket listening on 127.0.0.1 on a port the kernel chose.
public func listenOnLoopback(backlog: Int32 = 64) throws -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestSupportError("socket() failed") }
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && listen(fd, backlog) == 0 && getsockname(fd, $0, &length) == 0
        }
    }
    guard ok else {
        close(fd)
        throw TestSupportError("could not listen on 127.0.0.1")
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
public func freeLoopbackPort() throws -> Int {
    let (fd, port) = try listenOnLoopback()
    close(fd)
    return port
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
public func canConnect(port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
        }
    }
}

/// Finds an executable on PATH or in `extraDirectories`.
public func executable(_ name: String, extraDirectories: [String] = []) throws -> URL {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for directory in path.split(separator: ":").map(String.init) + extraDirectories {
        let candidate = URL(fileURLWithPath: directory).appendingPathComponent(name)
        if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
    }
    throw TestSupportError("\(name) not found on PATH or in \(extraDirectories); run the README's test command, which installs it")
}

