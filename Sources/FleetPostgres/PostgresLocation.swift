public import HostPort

/// Where the aggregator's PostgreSQL database is, from `--db`:
/// `postgres://USER@HOST[:PORT]/DATABASE[?sslmode=disable|require|verify-full&sslrootcert=FILE]`.
///
/// The password is never part of the URL (it would show in `ps` and in logs): it comes from a
/// file (`--db-password-file`) or `PGPASSWORD`, as libpq's own tools take it. `sslmode` has
/// libpq's meaning for the three modes it keeps: `disable` (plain TCP), `require` (encrypted,
/// the server's certificate not checked) and `verify-full` (encrypted, the certificate checked
/// against `sslrootcert`, or the system's trust store, and the host name). The default is
/// `disable` on a loopback host and `verify-full` elsewhere: a database across the network is
/// never reached in clear text unless the operator says so.
public struct PostgresLocation: Sendable, Hashable, CustomStringConvertible {
    public enum TLSMode: Sendable, Hashable {
        case disable
        case require
        case verifyFull(rootCertificateFile: String?)
    }

    public var user: String
    public var address: HostPort
    public var database: String
    public var tls: TLSMode

    public init(user: String, address: HostPort, database: String, tls: TLSMode) {
        self.user = user
        self.address = address
        self.database = database
        self.tls = tls
    }

    /// Whether `text` names a PostgreSQL database rather than an SQLite file.
    public static func isURL(_ text: String) -> Bool {
        text.hasPrefix("postgres://") || text.hasPrefix("postgresql://")
    }

    /// Why a `--db` URL was refused (the message says what to write instead).
    public struct ParseError: Error, Sendable, Hashable, CustomStringConvertible {
        public var description: String
    }

    public init(url text: String) throws(ParseError) {
        guard let scheme = ["postgres://", "postgresql://"].first(where: { text.hasPrefix($0) }) else {
            throw ParseError(description: "'\(text)' is not a postgres:// URL")
        }
        var rest = Substring(text.dropFirst(scheme.count))
        var query: Substring = ""
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        guard let slash = rest.firstIndex(of: "/") else {
            throw ParseError(description: "'\(text)' names no database: postgres://USER@HOST:PORT/DATABASE")
        }
        let authority = rest[..<slash]
        let database = rest[rest.index(after: slash)...]
        guard let at = authority.lastIndex(of: "@") else {
            throw ParseError(description: "'\(text)' names no user: postgres://USER@HOST:PORT/DATABASE")
        }
        let user = authority[..<at]
        if user.contains(":") {
            throw ParseError(
                description: "the database password must not be in the URL (it would show in ps and in logs): use --db-password-file FILE or PGPASSWORD")
        }
        guard !user.isEmpty, user.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "/") }) else {
            throw ParseError(description: "'\(user)' is not a database user name")
        }
        guard !database.isEmpty, !database.contains("/"), database.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
            throw ParseError(description: "'\(database)' is not a database name")
        }
        let address: HostPort
        do {
            address = try HostPort.parse(String(authority[authority.index(after: at)...]), role: .connect, defaultPort: 5432)
        } catch {
            throw ParseError(description: "database address: \(error.description)")
        }
        var mode: String?
        var rootCertificate: String?
        for pair in query.split(separator: "&") where !pair.isEmpty {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let value = parts.count == 2 ? String(parts[1]) : ""
            switch parts[0] {
            case "sslmode": mode = value
            case "sslrootcert": rootCertificate = value.isEmpty ? nil : value
            default:
                throw ParseError(description: "unknown URL parameter '\(parts[0])' (known: sslmode, sslrootcert)")
            }
        }
        let loopback = ["127.0.0.1", "::1", "localhost"].contains(address.host)
        let tls: TLSMode
        switch mode ?? (loopback ? "disable" : "verify-full") {
        case "disable":
            if rootCertificate != nil { throw ParseError(description: "sslrootcert needs sslmode=verify-full") }
            tls = .disable
        case "require":
            if rootCertificate != nil { throw ParseError(description: "sslrootcert needs sslmode=verify-full") }
            tls = .require
        case "verify-full": tls = .verifyFull(rootCertificateFile: rootCertificate)
        case let other:
            throw ParseError(description: "sslmode '\(other)' is not one of disable, require, verify-full")
        }
        self.init(user: String(user), address: address, database: String(database), tls: tls)
    }

    /// The URL without secrets (there are none in it), for logs and `/healthz`.
    public var description: String {
        let mode: String
        switch tls {
        case .disable: mode = "disable"
        case .require: mode = "require"
        case .verifyFull: mode = "verify-full"
        }
        return "postgres://\(user)@\(address)/\(database)?sslmode=\(mode)"
    }
}
