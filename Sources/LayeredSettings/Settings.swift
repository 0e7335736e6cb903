import FleetCore
public import YAMLReader

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Where a setting's value came from, for error messages.
public enum SettingOrigin: Sendable, Hashable, CustomStringConvertible {
    case flag(String)
    case environment(String)
    case file(String)

    public var description: String {
        switch self {
        case .flag(let name): "flag --\(name)"
        case .environment(let name): "environment variable \(name)"
        case .file(let path): "config file \(path)"
        }
    }
}

/// A setting that could not be used, naming the key and where its value came from.
public struct ConfigurationError: Error, Sendable, Hashable, CustomStringConvertible {
    public var key: String
    public var origin: SettingOrigin?
    public var message: String

    public init(key: String, origin: SettingOrigin?, _ message: String) {
        self.key = key
        self.origin = origin
        self.message = message
    }

    public var description: String {
        if let origin { return "invalid setting '\(key)' (from \(origin)): \(message)" }
        return "invalid setting '\(key)': \(message)"
    }
}

/// Settings layered as docs/contract.md says: a flag wins over the environment, which
/// wins over the configuration file. Every file key `heartbeatInterval` is also
/// the flag `--heartbeat-interval` and the variable `EDGEFLEET_HEARTBEAT_INTERVAL`.
public struct Settings: Sendable {
    /// A value as found: scalar text, a list of texts, or a nested structure (file only).
    public enum Value: Sendable, Hashable {
        case text(String)
        case list([String])
        case structured(YAMLNode)  // a mapping or a list of mappings from the file, decoded by the caller
    }

    private var file: [String: Value]
    private var environment: [String: String]
    private var flags: [String: Value]
    public let filePath: String?
    private var known: Set<String> = []

    /// - Parameters:
    ///   - yaml: the configuration file's text (a mapping at the top), or nil.
    ///   - filePath: its path, for messages.
    ///   - environment: the process environment (only `EDGEFLEET_*` is read).
    ///   - flags: values given on the command line, by file key (`heartbeatInterval`).
    public init(yaml: String?, filePath: String?, environment: [String: String], flags: [String: Value]) throws(ConfigurationError) {
        self.filePath = filePath
        self.environment = environment
        self.flags = flags
        self.file = [:]
        guard let yaml else { return }
        let node: YAMLNode?
        do {
            node = try YAMLNode.parse(yaml)
        } catch {
            throw ConfigurationError(key: "(file)", origin: filePath.map { .file($0) }, "not valid YAML: \(error)")
        }
        guard let node else { return }  // only comments
        guard let mapping = node.mapping else {
            throw ConfigurationError(key: "(file)", origin: filePath.map { .file($0) }, "the top level must be a mapping of settings")
        }
        for pair in mapping {
            guard let key = pair.key.string else {
                throw ConfigurationError(
                    key: "(file)", origin: filePath.map { .file($0) }, "line \(pair.key.line): every key must be a string")
            }
            switch pair.value {
            case .scalar(let scalar):
                file[key] = .text(scalar.text)
            case .sequence(let items) where items.allSatisfy({ $0.string != nil }):
                file[key] = .list(items.map { $0.string! })
            default:
                file[key] = .structured(pair.value)
            }
        }
    }

    /// Reads and layers a configuration file (if any) with the environment and flags.
    public static func load(configFile: String?, environment: [String: String], flags: [String: Value]) throws(ConfigurationError) -> Settings {
        var text: String?
        if let configFile {
            do {
                text = try String(contentsOfFile: configFile, encoding: .utf8)
            } catch {
                throw ConfigurationError(key: "config", origin: .flag("config"), "cannot read '\(configFile)': \(error)")
            }
        }
        return try Settings(yaml: text, filePath: configFile, environment: environment, flags: flags)
    }

    public static func flagName(_ key: String) -> String {
        var out = ""
        for c in key {
            if c.isUppercase {
                out += "-" + c.lowercased()
            } else {
                out.append(c)
            }
        }
        return out
    }

    public static func environmentName(_ key: String) -> String {
        "EDGEFLEET_" + String(flagName(key).uppercased().map { $0 == "-" ? "_" : $0 })
    }

    /// A file path: one written in the configuration file relative to it is taken relative to the
    /// file's directory (a bundle made by `edgefleet broker add-site --bundle` works wherever it is
    /// copied); one from a flag or the environment relative to the working directory.
    public mutating func path(_ key: String) throws(ConfigurationError) -> String? {
        guard let text = try string(key) else { return nil }
        guard !text.hasPrefix("/"), let (_, origin) = raw(key), case .file = origin, let filePath else { return text }
        guard let slash = filePath.lastIndex(of: "/") else { return text }  // the file is in the working directory
        return String(filePath[...slash]) + text
    }

    /// The raw value and its origin, by precedence.
    public mutating func raw(_ key: String) -> (Value, SettingOrigin)? {
        known.insert(key)
        if let value = flags[key] { return (value, .flag(Self.flagName(key))) }
        let name = Self.environmentName(key)
        if let value = environment[name] { return (.text(value), .environment(name)) }
        if let value = file[key] { return (value, .file(filePath ?? "-")) }
        return nil
    }

    public mutating func string(_ key: String) throws(ConfigurationError) -> String? {
        guard let (value, origin) = raw(key) else { return nil }
        guard case .text(let text) = value else { throw ConfigurationError(key: key, origin: origin, "expected a single value") }
        return text
    }

    public mutating func string(_ key: String, default fallback: String) throws(ConfigurationError) -> String {
        try string(key) ?? fallback
    }

    /// A duration such as `10s`, `5m`, `30d`; must be positive unless `allowZero`.
    public mutating func duration(_ key: String, default fallback: Duration, allowZero: Bool = false) throws(ConfigurationError) -> Duration {
        guard let (value, origin) = raw(key) else { return fallback }
        guard case .text(let text) = value else { throw ConfigurationError(key: key, origin: origin, "expected a duration like 10s or 5m") }
        let duration: Duration
        do {
            duration = try DurationFormat.parse(text)
        } catch {
            throw ConfigurationError(key: key, origin: origin, error.description)
        }
        if duration < .zero || (!allowZero && duration == .zero) {
            throw ConfigurationError(key: key, origin: origin, "must be longer than zero")
        }
        return duration
    }

    public mutating func integer(_ key: String, default fallback: Int, range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        guard let (value, origin) = raw(key) else { return fallback }
        guard case .text(let text) = value, let number = Int(text) else {
            throw ConfigurationError(key: key, origin: origin, "expected a whole number")
        }
        guard range.contains(number) else {
            throw ConfigurationError(key: key, origin: origin, "must be between \(range.lowerBound) and \(range.upperBound), got \(number)")
        }
        return number
    }

    /// `true`/`false` (also `yes`/`no`, `1`/`0`, `on`/`off`).
    public mutating func boolean(_ key: String, default fallback: Bool) throws(ConfigurationError) -> Bool {
        guard let (value, origin) = raw(key) else { return fallback }
        guard case .text(let text) = value else { throw ConfigurationError(key: key, origin: origin, "expected true or false") }
        switch text.lowercased() {
        case "true", "yes", "1", "on": return true
        case "false", "no", "0", "off": return false
        default: throw ConfigurationError(key: key, origin: origin, "expected true or false, got '\(text)'")
        }
    }

    /// A list: a YAML sequence in the file, a repeated flag, or comma-separated text.
    public mutating func list(_ key: String) throws(ConfigurationError) -> [String] {
        guard let (value, origin) = raw(key) else { return [] }
        switch value {
        case .list(let items): return items
        case .text(let text):
            return text.split(separator: ",").map(\.trimmed)
                .filter { !$0.isEmpty }
        case .structured: throw ConfigurationError(key: key, origin: origin, "expected a list of values")
        }
    }

    /// A nested structure from the file, decoded with `Decodable` (file only).
    public mutating func decode<T: Decodable>(_ type: T.Type, _ key: String) throws(ConfigurationError) -> T? {
        guard let (value, origin) = raw(key) else { return nil }
        let node: YAMLNode
        switch value {
        case .structured(let structured): node = structured
        case .list(let items): node = .sequence(items.map { .scalar(YAMLScalar($0, style: .doubleQuoted)) })
        case .text(let text):
            // A flag or variable may carry YAML in flow style: `[{name: a, command: [true]}]`.
            do {
                node = try YAMLNode.parse(text) ?? .scalar(YAMLScalar(""))
            } catch {
                throw ConfigurationError(key: key, origin: origin, "not valid YAML: \(error)")
            }
        }
        func path(_ codingPath: [any CodingKey], _ last: String? = nil) -> String {
            let parts = codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue } + (last.map { [$0] } ?? [])
            return ([key] + parts).joined(separator: ".")
        }
        do {
            return try YAMLDecoder().decode(type, from: node)
        } catch let error as ConfigurationError {
            throw ConfigurationError(key: "\(key).\(error.key)", origin: origin, error.message)
        } catch let DecodingError.keyNotFound(missing, context) {
            throw ConfigurationError(key: path(context.codingPath, missing.stringValue), origin: origin, "is required")
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.dataCorrupted(context),
            let DecodingError.valueNotFound(_, context)
        {
            if let inner = context.underlyingError as? ConfigurationError {
                throw ConfigurationError(key: path(context.codingPath, inner.key), origin: origin, inner.message)
            }
            throw ConfigurationError(key: path(context.codingPath), origin: origin, context.debugDescription)
        } catch {
            throw ConfigurationError(key: key, origin: origin, "\(error)")
        }
    }

    /// Fails on a file key nothing asked for (a typo must not be ignored silently).
    public func rejectUnknownFileKeys() throws(ConfigurationError) {
        if let unknown = file.keys.sorted().first(where: { !known.contains($0) }) {
            throw ConfigurationError(
                key: unknown, origin: filePath.map { .file($0) },
                "unknown setting; known settings are: \(known.sorted().joined(separator: ", "))")
        }
    }
}
