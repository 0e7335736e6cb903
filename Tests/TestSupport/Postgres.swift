public import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A real PostgreSQL server for tests, started the way the tests start mosquitto: Debian's
/// `initdb` into a temporary directory and `pg_ctl` on a free loopback port, as the `postgres`
/// user when the tests run as root (PostgreSQL refuses to run as root), with SCRAM password
/// authentication for one user. Each test takes a database of its own (`createDatabase()`), so
/// no test depends on another's rows or order. `shared` is started once per test process and
/// stopped when it exits.
public final class PostgresServer: @unchecked Sendable {
    public static let user = "edgefleet"
    public let password: String
    public let port: Int
    public let directory: String
    public var passwordFile: String { directory + "/password" }
    var dataDirectory: String { directory + "/data" }
    let binaries: String

    /// The server of this test process, started on first use.
    public static func shared() throws -> PostgresServer {
        try sharedServer.get()
    }

    nonisolated(unsafe) private static var sharedServer: Result<PostgresServer, any Error> = {
        let result = Result { try PostgresServer() }
        if case .success = result { atexit { try? PostgresServer.sharedServer.get().stop() } }
        return result
    }()

    /// `tls`: the server also speaks TLS with `tls`'s server certificate (for 127.0.0.1).
    public convenience init(tls: TestPKI) throws {
        try self.init(certificate: (tls.serverCertificate, tls.serverKey))
    }

    public convenience init() throws {
        try self.init(certificate: nil)
    }

    let tls: Bool

    private init(certificate: (String, String)?) throws {
        guard let version = try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql").compactMap(Int.init).max() else {
            throw TestSupportError("PostgreSQL is not installed (Debian package: postgresql)")
        }
        binaries = "/usr/lib/postgresql/\(version)/bin"
        directory = try temporaryDirectory("edgefleet-pg")
        let password = "pw-\(UUID().uuidString)"
        self.password = password
        let passwordFile = directory + "/password"
        try Data((password + "\n").utf8).write(to: URL(fileURLWithPath: passwordFile))
        chmod(passwordFile, 0o600)
        if let (certificate, key) = certificate {
            try FileManager.default.copyItem(atPath: certificate, toPath: directory + "/server.crt")
            try FileManager.default.copyItem(atPath: key, toPath: directory + "/server.key")
            chmod(directory + "/server.key", 0o600)
        }
        tls = certificate != nil
        try Self.giveToPostgres(directory)
        port = try freeLoopbackPort()
        try asPostgres(
            "initdb", ["-D", directory + "/data", "-U", Self.user, "--auth=scram-sha-256", "--pwfile=\(passwordFile)", "--no-sync", "--encoding=UTF8", "--locale=C"])
        try start()
    }

    /// `postgres://edgefleet@127.0.0.1:PORT/DATABASE` (the password goes in a file or PGPASSWORD).
    public func url(_ database: String, query: String = "") -> String {
        "postgres://\(Self.user)@127.0.0.1:\(port)/\(database)\(query.isEmpty ? "" : "?" + query)"
    }

    /// A new, empty database; returns its name.
    public func createDatabase() throws -> String {
        let name = "t_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
        try psql("CREATE DATABASE \(name)")
        return name
    }

    /// Runs SQL through psql as the test user (in `database`, by default the maintenance one).
    @discardableResult
    public func psql(_ sql: String, database: String = "postgres") throws -> String {
        let result = try run(
            URL(fileURLWithPath: "/usr/bin/psql"),
            ["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", "\(port)", "-U", Self.user, "-d", database, "-c", sql],
            environment: ["PGPASSWORD": password, "PATH": "/usr/bin:/bin"])
        guard result.status == 0 else { throw TestSupportError("psql failed: \(result.stderr)") }
        return result.stdout
    }

    /// Starts the server (again), waiting until it accepts connections.
    public func start() throws {
        try asPostgres(
            "pg_ctl",
            [
                "-D", dataDirectory, "-l", directory + "/postgres.log", "-w", "-t", "60", "-o",
                "-p \(port) -k \(directory) -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
                    + (tls ? " -c ssl=on -c ssl_cert_file=\(directory)/server.crt -c ssl_key_file=\(directory)/server.key" : ""),
                "start",
            ])
    }

    /// Stops it (fast shutdown: sessions are ended, as when an operator stops the database).
    public func stop() throws {
        try asPostgres("pg_ctl", ["-D", dataDirectory, "-m", "fast", "-w", "-t", "60", "stop"])
    }

    /// The server's log, for a failing test's message.
    public var log: String { (try? String(contentsOfFile: directory + "/postgres.log", encoding: .utf8)) ?? "" }

    private func asPostgres(_ tool: String, _ arguments: [String]) throws {
        let program = binaries + "/" + tool
        let result =
            getuid() == 0
            ? try run(URL(fileURLWithPath: "/usr/sbin/runuser"), ["-u", "postgres", "--", program] + arguments)
            : try run(URL(fileURLWithPath: program), arguments)
        guard result.status == 0 else {
            throw TestSupportError("\(tool) failed (exit \(result.status)): \(result.stderr)\(result.stdout)\n\(log)")
        }
    }

    /// As root, the directory (and what is in it) becomes the postgres user's.
    private static func giveToPostgres(_ directory: String) throws {
        guard getuid() == 0 else { return }
        guard let entry = getpwnam("postgres") else { throw TestSupportError("no postgres user (Debian package: postgresql)") }
        let (uid, gid) = (entry.pointee.pw_uid, entry.pointee.pw_gid)
        chown(directory, uid, gid)
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] { chown(directory + "/" + name, uid, gid) }
    }
}
