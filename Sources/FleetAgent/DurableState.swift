public import FleetCore

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Why the agent's state directory could not be read or written.
public struct StateError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// When the site last reached Azure, recorded so that a restart, a crash or a
/// power loss never resets the 30-day clock.
///
/// Two clocks are kept: the wall clock, and the kernel's boot-time clock
/// (`CLOCK_BOOTTIME`, which counts suspend too) with the boot's id. After a
/// process restart within the same boot the age comes from the boot-time clock,
/// so a wall-clock jump (NTP correcting a wrong clock) cannot shorten or reset
/// it; after a reboot only the wall clock is left.
public struct ContactRecord: Codable, Sendable, Hashable {
    public var wallClock: Date
    public var bootID: String?
    public var bootTimeNanoseconds: UInt64?

    public init(wallClock: Date, bootID: String?, bootTimeNanoseconds: UInt64?) {
        self.wallClock = wallClock
        self.bootID = bootID
        self.bootTimeNanoseconds = bootTimeNanoseconds
    }

    /// The age of this contact now, in seconds (never negative).
    public func age(now: ContactRecord) -> Double {
        if let bootID, let then = bootTimeNanoseconds, bootID == now.bootID, let current = now.bootTimeNanoseconds,
            current >= then
        {
            return Double(current - then) / 1e9
        }
        return max(0, now.wallClock.timeIntervalSince(wallClock))
    }
}

/// What the agent keeps in its state directory.
public struct AgentState: Codable, Sendable, Hashable, SchemaIdentified {
    public static let schema = "edgefleet.agent-state/1"
    public var schema = SchemaTag<AgentState>()
    /// The MQTT session counter: goes up by one on every connection.
    public var session: UInt64
    /// The last successful Azure contact, or `nil` if there has never been one.
    public var lastContact: ContactRecord?

    public init(session: UInt64 = 0, lastContact: ContactRecord? = nil) {
        self.session = session
        self.lastContact = lastContact
    }
}

/// Reads of the clocks the agent uses; a value so that tests can supply their own.
public struct SystemClocks: Sendable {
    /// A reading of the clocks has the same three parts as a contact record: a
    /// contact is recorded as the reading taken when it happened.
    public typealias Reading = ContactRecord

    public var read: @Sendable () -> Reading

    public init(read: @escaping @Sendable () -> Reading) { self.read = read }

    /// The real clocks: wall clock, `/proc/sys/kernel/random/boot_id` and `CLOCK_BOOTTIME`.
    public static let system = SystemClocks {
        Reading(wallClock: Date(), bootID: currentBootID, bootTimeNanoseconds: bootTimeNanoseconds())
    }

    private static let currentBootID: String? = {
        #if os(Linux)
        guard let file = fopen("/proc/sys/kernel/random/boot_id", "r") else { return nil }
        defer { fclose(file) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = fread(&buffer, 1, buffer.count, file)
        let id = String(decoding: buffer[0..<count], as: UTF8.self).filter { !$0.isWhitespace }
        return id.isEmpty ? nil : id
        #else
        return nil
        #endif
    }()

    private static func bootTimeNanoseconds() -> UInt64? {
        #if os(Linux)
        var spec = timespec()
        guard clock_gettime(CLOCK_BOOTTIME, &spec) == 0 else { return nil }
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
        #else
        return nil
        #endif
    }
}

/// The agent's state file in its state directory, written atomically: to a
/// temporary file, fsync, rename over the old one, fsync the directory. A crash
/// at any point leaves either the old or the new state, never a torn one.
public struct AgentStateStore: Sendable {
    public let directory: String
    public var path: String { directory + "/agent-state.json" }

    /// Opens (and creates, mode 0700) the state directory.
    public init(directory: String) throws(StateError) {
        self.directory = directory
        var info = stat()
        if stat(directory, &info) != 0 {
            guard mkdir(directory, 0o700) == 0 || errno == EEXIST else {
                throw StateError("cannot create the state directory '\(directory)': \(String(cString: strerror(errno)))")
            }
        } else if info.st_mode & S_IFMT != S_IFDIR {
            throw StateError("the state directory '\(directory)' exists and is not a directory")
        }
        guard access(directory, W_OK) == 0 else {
            throw StateError("the state directory '\(directory)' is not writable: \(String(cString: strerror(errno)))")
        }
    }

    /// The saved state; a fresh one when there is no state file yet.
    ///
    /// A state file that cannot be decoded is moved aside (`agent-state.json.corrupt`)
    /// and reported as an error: the caller decides whether to start afresh (the
    /// site then reports "never in contact" until the next successful probe,
    /// which is the safe side: never "connected" by mistake).
    public func load() throws(StateError) -> AgentState {
        guard access(path, F_OK) == 0 else { return AgentState() }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw StateError("cannot read '\(path)': \(String(cString: strerror(errno)))")
        }
        let bytes = Array(data)
        do {
            return try FleetJSON.decode(AgentState.self, from: bytes)
        } catch {
            let aside = path + ".corrupt"
            _ = rename(path, aside)
            throw StateError("the state file '\(path)' is unreadable (\(error)); moved it to '\(aside)'")
        }
    }

    /// Saves `state` atomically and durably.
    public func save(_ state: AgentState) throws(StateError) {
        let bytes: [UInt8]
        do {
            bytes = try FleetJSON.encode(state)
        } catch {
            throw StateError("cannot encode the agent state: \(error)")
        }
        try writeFileDurably(bytes, to: path, directory: directory)
    }
}

/// Writes `bytes` to `path` so that a crash at any point leaves either the old
/// or the new content, never a torn file: a temporary file beside it, fsync,
/// rename over the old one, fsync of `directory`. Mode 0600.
func writeFileDurably(_ bytes: [UInt8], to path: String, directory: String) throws(StateError) {
    let temporary = path + ".tmp"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw StateError("cannot write '\(temporary)': \(String(cString: strerror(errno)))") }
    var written = 0
    while written < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, bytes.count - written) }
        if n < 0 {
            if errno == EINTR { continue }
            let message = String(cString: strerror(errno))
            close(fd)
            unlink(temporary)
            throw StateError("cannot write '\(temporary)': \(message)")
        }
        written += n
    }
    guard fsync(fd) == 0 else {
        let message = String(cString: strerror(errno))
        close(fd)
        unlink(temporary)
        throw StateError("cannot fsync '\(temporary)': \(message)")
    }
    close(fd)
    guard rename(temporary, path) == 0 else {
        let message = String(cString: strerror(errno))
        unlink(temporary)
        throw StateError("cannot replace '\(path)': \(message)")
    }
    let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if directoryFD >= 0 {
        _ = fsync(directoryFD)
        close(directoryFD)
    }
}
