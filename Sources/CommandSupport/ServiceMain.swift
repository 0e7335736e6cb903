public import ArgumentParser
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
