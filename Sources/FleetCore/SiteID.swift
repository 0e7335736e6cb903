/// Why a site id, topic root or other identifier was refused.
public struct IdentifierError: Error, Sendable, Hashable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A site identifier: 1 to 63 characters of `a-z`, `0-9` and `-`, starting with
/// a letter or digit. Safe as an MQTT topic level, a broker username, a DNS label
/// and a file name; never `+`, `#`, `/` or `$`.
public struct SiteID: Sendable, Hashable, Comparable, CustomStringConvertible, Codable {
    public let rawValue: String

    /// Validates `text` as a site id.
    public init(_ text: String) throws(IdentifierError) {
        if let problem = Self.problem(with: text) { throw IdentifierError(problem) }
        rawValue = text
    }

    /// A readable explanation of why `text` is not a valid site id, or `nil` if it is one.
    public static func problem(with text: String) -> String? {
        // The common case (a valid id) in one pass over the bytes, without copying them.
        if text.utf8.count <= 63, let first = text.utf8.first, isLowerAlphanumeric(first),
            text.utf8.allSatisfy({ isLowerAlphanumeric($0) || $0 == UInt8(ascii: "-") })
        {
            return nil
        }
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty else { return "site id must not be empty" }
        guard bytes.count <= 63 else { return "site id '\(text.prefix(70))' is longer than 63 characters" }
        guard let first = bytes.first, isLowerAlphanumeric(first) else {
            return "site id '\(text)' must start with a lowercase letter or digit"
        }
        if let bad = text.unicodeScalars.first(where: { !($0.isASCII && (isLowerAlphanumeric(UInt8($0.value)) || $0 == "-")) }) {
            return "site id '\(text)' contains '\(bad)'; only a-z, 0-9 and '-' are allowed"
        }
        return nil
    }

    public static func isValid(_ text: String) -> Bool { problem(with: text) == nil }

    private static func isLowerAlphanumeric(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }

    public var description: String { rawValue }
    public static func < (lhs: SiteID, rhs: SiteID) -> Bool { lhs.rawValue < rhs.rawValue }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do {
            try self.init(text)
        } catch {
            throw PayloadError.invalidSiteID(error.description)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}
