import Crypto
import YAMLReader

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// What a principal may do (docs/contract.md, "Operators and roles"). Each role includes the
/// ones before it.
public enum Role: String, Codable, Sendable, CaseIterable, Comparable {
    /// Reads: the fleet, sites, the queue, rollouts, the audit log, metrics.
    case viewer
    /// Submits, cancels and retries operations; creates, pauses, resumes and cancels rollouts.
    case `operator`
    /// Releases operations blocked past a site's deadline, cancels in bulk, forgets a site.
    case admin

    public static func < (a: Role, b: Role) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

/// Someone known by name: the role they hold and the SHA-256 of their token (the token itself
/// is never stored: a copy of the file does not let anyone in).
public struct Principal: Codable, Sendable, Hashable {
    public var name: String
    public var role: Role
    /// Lowercase hex, 64 characters.
    public var tokenSHA256: String

    public init(name: String, role: Role, tokenSHA256: String) {
        self.name = name
        self.role = role
        self.tokenSHA256 = tokenSHA256
    }

    /// A name: a letter or digit, then letters, digits, `.`, `_`, `@`, `-`; at most 64.
    public static func isValidName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, name.unicodeScalars.count <= 64 else { return false }
        func ok(_ c: Unicode.Scalar) -> Bool { c.isASCII && (c.properties.isAlphabetic || ("0"..."9").contains(c)) }
        return ok(first) && name.unicodeScalars.allSatisfy { ok($0) || ".-_@".unicodeScalars.contains($0) }
    }
}

public struct PrincipalsError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A principals file: YAML, `principals:` a list of `{name, role, tokenSHA256}`. The flat token
/// list of earlier versions (one token per line) is still read: every token in it is one
/// principal named `admin` with the `admin` role.
public struct PrincipalsFile: Sendable, Equatable {
    public var principals: [Principal]
    /// Read from a flat token list.
    public var legacy: Bool

    public init(principals: [Principal] = [], legacy: Bool = false) {
        self.principals = principals
        self.legacy = legacy
    }

    private struct Document: Decodable {
        var principals: [Principal]?
    }

    /// Parses a file's text; `path` only names it in errors.
    public static func parse(_ text: String, path: String) throws(PrincipalsError) -> PrincipalsFile {
        let lines = text.split(whereSeparator: \.isNewline).map { line in
            String(line.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" || $0 == "\r" }.reversed())
        }
        let meaningful = lines.filter { !$0.isEmpty && !$0.hasPrefix("#") }
        // A document with a `principals:` key is the new format; anything else a token list.
        guard meaningful.contains(where: { $0.hasPrefix("principals:") }) else {
            for token in meaningful where token.count < 16 || token.contains(where: \.isWhitespace) {
                throw PrincipalsError(
                    "'\(path)' holds a token shorter than 16 characters or with spaces; use long random tokens (edgefleet token add)")
            }
            return PrincipalsFile(
                principals: meaningful.map { Principal(name: "admin", role: .admin, tokenSHA256: hash(token: $0)) }, legacy: true)
        }
        let document: Document
        do {
            document = try YAMLDecoder().decode(Document.self, from: text)
        } catch {
            throw PrincipalsError("'\(path)' is not a principals file: \(error)")
        }
        let principals = document.principals ?? []
        var names = Set<String>()
        var hashes = Set<String>()
        for (index, principal) in principals.enumerated() {
            let which = "'\(path)', principal \(index + 1)"
            guard Principal.isValidName(principal.name) else {
                throw PrincipalsError("\(which): the name must be 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
            }
            guard names.insert(principal.name).inserted else { throw PrincipalsError("\(which): the name '\(principal.name)' is used twice") }
            guard isDigest(principal.tokenSHA256) else {
                throw PrincipalsError("\(which) (\(principal.name)): tokenSHA256 must be 64 lowercase hex digits (the SHA-256 of the token)")
            }
            guard hashes.insert(principal.tokenSHA256).inserted else {
                throw PrincipalsError("\(which) (\(principal.name)): the same token as another principal")
            }
        }
        return PrincipalsFile(principals: principals)
    }

    public static func read(path: String) throws(PrincipalsError) -> PrincipalsFile {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw PrincipalsError("cannot read the principals file '\(path)': \(error)")
        }
        return try parse(text, path: path)
    }

    /// The file's text (YAML).
    public func render() -> String {
        var text = """
            # EdgeFleet principals: who may use the aggregator's API, by name and role (viewer, operator, admin).
            # Only each token's SHA-256 is kept; `edgefleet token add NAME ROLE --principals FILE` adds one.

            principals:

            """
        for principal in principals {
            text += "  - name: \(principal.name)\n    role: \(principal.role.rawValue)\n    tokenSHA256: \(principal.tokenSHA256)\n"
        }
        if principals.isEmpty { text = text.replacing("principals:\n", with: "principals: []\n") }
        return text
    }

    /// The principal whose token this is, or nil. Every principal's digest is compared in full,
    /// whatever matches, so the time taken says nothing about which (or how much) matched.
    public func principal(forToken token: some StringProtocol) -> Principal? {
        let digest = Array(SHA256.hash(data: Array(token.utf8)))
        var found: Principal?
        for principal in principals {
            var difference: UInt8 = 0
            let stored = Self.bytes(hex: principal.tokenSHA256)
            for i in 0..<32 { difference |= (i < stored.count ? stored[i] : 0) ^ digest[i] }
            if difference == 0 && stored.count == 32 { found = principal }
        }
        return found
    }

    /// Adds a principal with a new random token; returns the file with it and the token (shown
    /// once: only its digest is kept).
    public func adding(name: String, role: Role) throws(PrincipalsError) -> (PrincipalsFile, token: String) {
        guard !legacy else {
            throw PrincipalsError(
                "this file is a flat token list (the earlier format); give a new file to --principals and start the aggregator with it")
        }
        guard Principal.isValidName(name) else {
            throw PrincipalsError("the name must be 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
        }
        guard !principals.contains(where: { $0.name == name }) else { throw PrincipalsError("a principal named '\(name)' exists already") }
        let token = Self.newToken()
        var file = self
        file.principals.append(Principal(name: name, role: role, tokenSHA256: Self.hash(token: token)))
        return (file, token)
    }

    /// Writes the file readable by its owner only, atomically (a temporary file renamed over it).
    public func write(to path: String) throws(PrincipalsError) {
        let temporary = path + ".tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw PrincipalsError("cannot write '\(temporary)': \(String(cString: strerror(errno)))") }
        let bytes = Array(render().utf8)
        var written = 0
        while written < bytes.count {
            let n = bytes[written...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                let reason = String(cString: strerror(errno))
                close(fd)
                unlink(temporary)
                throw PrincipalsError("cannot write '\(temporary)': \(reason)")
            }
            written += n
        }
        let synced = fsync(fd) == 0
        close(fd)
        guard synced, rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw PrincipalsError("cannot write '\(path)': \(reason)")
        }
    }

    /// SHA-256 of a token, lowercase hex.
    public static func hash(token: some StringProtocol) -> String {
        SHA256.hash(data: Array(token.utf8)).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }

    /// A new token: `ef_` and 256 random bits in hex.
    public static func newToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return "ef_" + (0..<4).map { _ in
            let hex = String(generator.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
    }

    static func isDigest(_ text: String) -> Bool {
        text.utf8.count == 64 && text.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    static func bytes(hex: String) -> [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(32)
        var high: UInt8?
        for c in hex.utf8 {
            let value: UInt8 = (0x30...0x39).contains(c) ? c - 0x30 : (0x61...0x66).contains(c) ? c - 0x61 + 10 : 0
            if let h = high {
                result.append(h << 4 | value)
                high = nil
            } else {
                high = value
            }
        }
        return result
    }
}
