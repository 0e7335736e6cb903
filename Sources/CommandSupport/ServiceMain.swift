public import ArgumentParser
@_exported public import LayeredSettings
import Subprocesses
public import Logging

/// Layers the configuration file, the `EDGEFLEET_*` environment and the flags, and builds
/// a program's configuration from them; a bad setting becomes a usage error (exit 2)
/// naming the key and where its value came from.
public func loadConfiguration<Configuration>(
    file: String?, flags: [String: Settings.Value], _ build: (inout Settings) throws(ConfigurationError) -> Configuration
) throws -> Configuration {
    do {
        var settings = try Settings.load(configFile: file, environment: processEnvironment(), flags: flags)
        return try build(&settings)
    } catch {
        throw ValidationError(error.description)
    }
}

/// Sends every log line to standard error at `level` (a `--log-level` value) and returns
/// the program's logger.
public func standardErrorLogger(label: String, level text: String) throws -> Logger {
    guard let level = Logger.Level(rawValue: text) else { throw ValidationError("--log-level: unknown level '\(text)'") }
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
    return Logger(label: label)
}

/// The options every EdgeFleet service shares: its configuration, its log level, and how
/// it reaches the broker. Each is also a configuration-file key and an `EDGEFLEET_*`
/// variable (see `Settings`).
public struct ServiceOptions: ParsableArguments {
    @Option(help: "YAML configuration file.") public var config: String?
    @Flag(help: "Validate the configuration, print it and exit.") public var checkConfig = false
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.") public var logLevel: String = "info"
    @OptionGroup public var broker: BrokerFlags

    public init() {}

    /// The broker and topic settings given as flags, by file key.
    public var flagSettings: [String: Settings.Value] { broker.flagSettings }
}

/// How a program reaches the broker: the URL, credentials, TLS files and the topic root
/// (the services' and the CLI's `watch` and `simulate`).
public struct BrokerFlags: ParsableArguments {
    @Option(help: "Broker URL, mqtt:// or mqtts:// (repeatable: the others are tried in order when one fails).") var broker: [String] = []
    @Option(help: "Broker username.") var username: String?
    @Option(help: "File holding the broker password.") var passwordFile: String?
    @Option(help: "CA certificate (PEM) for mqtts://.") var caFile: String?
    @Option(help: "Client certificate (PEM).") var certFile: String?
    @Option(help: "Client key (PEM).") var keyFile: String?
    @Option(help: "Topic root (default edgefleet/v1).") var topicRoot: String?

    public init() {}

    /// The settings given as flags, by file key.
    public var flagSettings: [String: Settings.Value] {
        let scalars: [(String, String?)] = [
            ("username", username), ("passwordFile", passwordFile), ("caFile", caFile), ("certFile", certFile),
            ("keyFile", keyFile), ("topicRoot", topicRoot),
        ]
        var flags: [String: Settings.Value] = [:]
        for case let (key, value?) in scalars { flags[key] = .text(value) }
        if broker.count == 1 { flags["broker"] = .text(broker[0]) } else if broker.count > 1 { flags["broker"] = .list(broker) }
        return flags
    }
}
