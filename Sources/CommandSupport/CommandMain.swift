public import ArgumentParser

#if canImport(Glibc)
import Glibc
private func terminate(_ code: Int32) -> Never { Glibc.exit(code) }
#elseif canImport(Musl)
import Musl
private func terminate(_ code: Int32) -> Never { Musl.exit(code) }
#elseif canImport(Darwin)
import Darwin
private func terminate(_ code: Int32) -> Never { Darwin.exit(code) }
#endif

/// Writes a line to standard error.
public func printError(_ line: String) {
    var text = line
    if !text.hasSuffix("\n") { text += "\n" }
    _ = text.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
}

/// Exit codes shared by the EdgeFleet executables.
public enum EdgeFleetExit {
    public static let ok: Int32 = 0
    public static let failure: Int32 = 1
    /// A bad flag or value (the contract's usage error, not ArgumentParser's 64).
    public static let usage: Int32 = 2
    public static let notFound: Int32 = 3
    public static let refused: Int32 = 4
}

extension AsyncParsableCommand {
    /// Parses the command line and runs the command with EdgeFleet's exit codes:
    /// `--help` and `--version` exit 0, a bad flag or value exits 2 with a clear
    /// message, a failure while running exits 1 (or the code the error carries).
    public static func runMain(_ arguments: [String]? = nil) async -> Never {
        do {
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            terminate(EdgeFleetExit.ok)
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure {
                printError(fullMessage(for: error))
                terminate(EdgeFleetExit.usage)
            }
            if code == .success {
                self.exit(withError: error)
            }
            if let exitError = error as? ExitCode {
                terminate(exitError.rawValue)
            }
            let message = fullMessage(for: error)
            printError("\(commandName): \(message.isEmpty ? String(describing: error) : message)")
            terminate(EdgeFleetExit.failure)
        }
    }

    private static var commandName: String {
        configuration.commandName ?? String(describing: Self.self)
    }
}

