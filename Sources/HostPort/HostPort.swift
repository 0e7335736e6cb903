/// A host and a port as written in flags and configuration files: `HOST:PORT`, `[IPv6]:PORT`,
/// or `HOST` alone where the caller has a default port. The one parser of the project (the
/// HTTP listen address, broker URLs and the Azure probe's endpoints all use it).
///
/// Port 0 means "any free port", which only a listening socket can take: `parse` refuses it
/// unless `role` is `.listen`. A destination always names a port from 1 to 65535.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// What the address is for: a listening socket may ask for any free port (0).
    public enum Role: Sendable {
        case listen
        case connect
    }

    /// Why a text is not a host and port (the message names the text).
    public struct ParseError: Error, Sendable, Hashable, CustomStringConvertible {
        public var description: String
    }

    /// Parses `HOST:PORT` or `[IPv6]:PORT`; without a port, `defaultPort` (when given).
    public static func parse(_ text: String, role: Role, defaultPort: Int? = nil) throws(ParseError) -> HostPort {
        let host: Substring
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw ParseError(description: "'\(text)' has an unclosed IPv6 bracket") }
            host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw ParseError(description: "'\(text)' has text after the IPv6 address") }
                portText = after.dropFirst()
            }
        } else if let colon = text.lastIndex(of: ":") {
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            // An IPv6 address without brackets: its port cannot be told from its last group.
            if host.contains(":") { throw ParseError(description: "'\(text)': write an IPv6 address in brackets, [ADDRESS]:PORT") }
        } else {
            host = Substring(text)
        }
        guard !host.isEmpty else { throw ParseError(description: "'\(text)' has no host") }
        guard !host.contains(where: { $0 == " " || $0 == "/" || $0 == "@" || $0 == "?" || $0 == "#" || $0.isNewline }) else {
            throw ParseError(description: "'\(text)' is not a host name or address")
        }
        let port: Int
        if let portText {
            let lowest = role == .listen ? 0 : 1
            guard portText.allSatisfy(\.isASCII), let number = Int(portText), (lowest...65535).contains(number) else {
                throw ParseError(description: "'\(text)' has an invalid port '\(portText)' (\(lowest) to 65535)")
            }
            port = number
        } else if let defaultPort {
            port = defaultPort
        } else {
            throw ParseError(description: "'\(text)' has no port: write host:port")
        }
        return HostPort(host: String(host), port: port)
    }

    /// `host:port`, with an IPv6 host in brackets.
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
